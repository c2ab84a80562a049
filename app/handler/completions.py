"""Legacy completions (``/v1/completions``): raw prompts, echo, legacy logprobs, over the
neutral generation core."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from app.core import errors
from app.core.context import RequestContext
from app.generation.core import GenerationCore, Run
from app.generation.events import ChoiceEnd, PromptLogprobsOut, TextOut, TokenLogprob
from app.generation.fim import FillInMiddle
from app.generation.request import FieldNames, GenerationSpec
from app.handler.logprobs import TokenTexts
from app.handler.openai_common import (
    StreamEnding,
    sampling_of,
    system_fingerprint,
    usage_dict,
)
from app.schemas.openai import CompletionRequest

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for legacy completions


def completion_spec(body: CompletionRequest) -> GenerationSpec:
    """The neutral request behind a legacy completion: one submission per prompt."""
    prompt = body.prompt
    if isinstance(prompt, str):
        prompts: list = [prompt]
    elif prompt and all(isinstance(t, int) for t in prompt):
        prompts = [list(prompt)]
    else:
        prompts = list(prompt)
    return GenerationSpec(
        model=body.model,
        capability="completions",
        sampling=sampling_of(body),
        n=body.n or 1,
        max_tokens=DEFAULT_MAX_TOKENS if body.max_tokens is None else body.max_tokens,
        prompts=prompts,
        logprobs=body.logprobs,
        prompt_logprobs=body.logprobs if body.echo else None,  # prompt scoring
        fim=FillInMiddle(body.suffix) if body.suffix else None,
        names=FieldNames(prompt="prompt"),
        cache_salt=body.cache_salt,
    )


class LegacyLogprobs:
    """Builds OpenAI's legacy ``{tokens, token_logprobs, top_logprobs, text_offset}``."""

    def __init__(self, texts: TokenTexts, offset: int) -> None:
        self.texts = texts
        self.offset = offset

    def block(self, items: list[TokenLogprob]) -> dict[str, Any]:
        tokens, values, tops, offsets = [], [], [], []
        for item in items:
            token = self.texts.entry(item.token_id, item.logprob)["token"]
            tokens.append(token)
            values.append(item.logprob)
            tops.append(self._top(token, item))
            offsets.append(self.offset)
            self.offset += len(token)
        return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops,
                "text_offset": offsets}

    def prompt_block(
        self, ids: list[int], scores: list[TokenLogprob | None]
    ) -> dict[str, Any]:
        """The echoed prompt's tokens; the first has no logprob (``null``), as OpenAI."""
        items = [s or TokenLogprob(t, 0.0, []) for t, s in zip(ids, scores, strict=True)]
        block = self.block(items)
        for i, score in enumerate(scores):
            if score is None:
                block["token_logprobs"][i] = block["top_logprobs"][i] = None
        return block

    def _top(self, token: str, item: TokenLogprob) -> dict[str, float]:
        """The ``logprobs`` most likely tokens plus the sampled one (OpenAI: up to
        ``logprobs + 1`` entries, the sampled token always among them). Byte fragments of
        different tokens may read alike (U+FFFD): the sampled token's value wins."""
        top = {self.texts.entry(t, lp)["token"]: lp for t, lp in item.top}
        top[token] = item.logprob
        return top


class CompletionsHandler:
    def __init__(self, core: GenerationCore) -> None:
        self.core = core

    async def prepare(
        self, body: CompletionRequest, ctx: RequestContext
    ) -> tuple[Run, list[str]]:
        """Validate and queue every prompt × n; returns the run and each prompt's echo."""
        ctx.apply_body_metadata(body.metadata)
        ctx.model = body.model
        if body.suffix and body.echo:
            raise errors.invalid_request(
                "echo cannot be combined with suffix (fill in the middle).", param="echo"
            )
        if body.best_of is not None and body.best_of != body.n:
            raise errors.invalid_request("best_of is not supported.", param="best_of")
        run = await self.core.start(completion_spec(body), ctx)
        echoes = [run.tokenizer.decode(p) if body.echo else "" for p in run.prompts]
        return run, echoes

    async def complete(self, run: Run, echoes: list[str], ctx: RequestContext) -> dict[str, Any]:
        n = run.spec.n
        result = await run.collect()
        texts = TokenTexts(run.tokenizer)
        want = run.spec.logprobs is not None

        def logprobs(c: int) -> dict[str, Any]:
            scores = result.prompt_logprobs[c]
            if scores is None:
                return LegacyLogprobs(texts, len(echoes[c // n])).block(result.logprobs[c])
            builder = LegacyLogprobs(texts, 0)
            head = builder.prompt_block(run.prompts[c // n], scores)
            tail = builder.block(result.logprobs[c])
            return {key: head[key] + tail[key] for key in head}

        choices = [
            {
                "index": c,
                "text": echoes[c // n] + result.texts[c],
                "logprobs": logprobs(c) if want else None,
                "finish_reason": result.finish_reasons[c],
            }
            for c in range(run.choices)
        ]
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": ctx.model,
            "system_fingerprint": system_fingerprint(run.managed),
            "choices": choices,
            "usage": usage_dict(result.usage),
            "htdi": ctx.htdi(),
        }

    async def stream(
        self, run: Run, echoes: list[str], ctx: RequestContext, include_usage: bool
    ) -> AsyncIterator[Any]:
        texts = TokenTexts(run.tokenizer)
        base = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                "created": int(time.time()), "model": ctx.model,
                "system_fingerprint": system_fingerprint(run.managed)}
        n = run.spec.n
        ending = StreamEnding(base, run.choices, include_usage)
        builders: dict[int, LegacyLogprobs] = {}
        want_logprobs = run.spec.logprobs is not None

        def choice(index: int, text: str, finish: str | None, items) -> dict:
            block = None
            if items is not None and want_logprobs:
                builder = builders.setdefault(
                    index, LegacyLogprobs(texts, len(echoes[index // n]))
                )
                block = builder.block(items)
            return {"index": index, "text": text, "logprobs": block, "finish_reason": finish}

        scoring = run.spec.prompt_logprobs is not None  # echoes wait for their logprobs
        try:
            for p, echo in enumerate(echoes):
                if echo and not scoring:
                    for i in range(n):
                        yield ending.chunk(choice(p * n + i, echo, None, None))
            async for event in run.events():
                if isinstance(event, PromptLogprobsOut):
                    p = event.choice // n
                    builder = builders.setdefault(event.choice, LegacyLogprobs(texts, 0))
                    block = builder.prompt_block(run.prompts[p], event.logprobs)
                    yield ending.chunk({"index": event.choice, "text": echoes[p],
                                        "logprobs": block, "finish_reason": None})
                elif isinstance(event, TextOut):
                    yield ending.chunk(choice(event.choice, event.text, None,
                                              event.logprobs or []))
                elif isinstance(event, ChoiceEnd):
                    final = choice(event.choice, "", event.finish_reason, event.logprobs or [])
                    yield ending.final(final, ctx)
                else:
                    for item in ending.passthrough(event, ctx):
                        yield item
        finally:
            run.close()
