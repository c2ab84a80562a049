"""Legacy completions (``/v1/completions``): raw prompts, echo, legacy logprobs."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from app.config import Settings
from app.core import errors
from app.core.context import RequestContext
from app.engine.lm.types import Failed, Finished, PrefillProgress, TextDelta, TokenLogprob
from app.handler.generation import (
    KEEP_ALIVE,
    Submission,
    check_common_limits,
    failure_error,
    merged_events,
    resolve_max_tokens,
    sampling_params,
    submit,
    usage,
)
from app.handler.logprobs import TokenTexts
from app.lifecycle.manager import ManagedModel, ModelManager
from app.schemas.openai import CompletionRequest

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for legacy completions


def _prompts(body: CompletionRequest, tokenizer: Any, vocab: int) -> list[list[int]]:
    value = body.prompt
    if isinstance(value, str):
        texts: list[str] | None = [value]
        ids = None
    elif not value:
        raise errors.invalid_request("prompt must not be empty.", param="prompt")
    elif all(isinstance(p, str) for p in value):
        texts, ids = list(value), None  # type: ignore[arg-type]
    elif all(isinstance(p, int) for p in value):
        texts, ids = None, [list(value)]  # type: ignore[arg-type]
    else:
        texts, ids = None, [list(p) for p in value]  # type: ignore[union-attr]
    if texts is not None:
        if any(not t for t in texts):
            raise errors.invalid_request("prompt must not be empty.", param="prompt")
        ids = [tokenizer.encode(t, add_special_tokens=True) for t in texts]
    assert ids is not None
    for prompt in ids:
        if not prompt:
            raise errors.invalid_request("prompt must not be empty.", param="prompt")
        if any(t < 0 or t >= vocab for t in prompt):
            raise errors.invalid_request(
                f"prompt token ids must be within [0, {vocab}).", param="prompt"
            )
    return ids


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
            tops.append({self.texts.entry(t, lp)["token"]: lp for t, lp in item.top} or None)
            offsets.append(self.offset)
            self.offset += len(token)
        return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops,
                "text_offset": offsets}


class CompletionsHandler:
    def __init__(self, manager: ModelManager, settings: Settings) -> None:
        self.manager = manager
        self.settings = settings

    async def prepare(
        self, body: CompletionRequest, ctx: RequestContext
    ) -> tuple[list[Submission], list[str]]:
        """Validate and queue every prompt × n; returns submissions and echo prefixes."""
        ctx.apply_body_metadata(body.metadata)
        ctx.model = body.model
        check_common_limits(body, self.settings)
        if body.suffix:
            raise errors.invalid_request("suffix is not supported.", param="suffix")
        if body.best_of is not None and body.best_of != body.n:
            raise errors.invalid_request("best_of is not supported.", param="best_of")
        if body.echo and body.logprobs is not None:
            raise errors.invalid_request(
                "echo together with logprobs (prompt logprobs) is not supported.",
                param="echo",
            )
        managed = await self.manager.acquire(body.model, "completions")
        try:
            submissions, echoes = await self._submit(body, ctx, managed)
        except BaseException:
            self.manager.release(managed)
            raise
        submissions[0].release = lambda: self.manager.release(managed)
        return submissions, echoes

    async def _submit(
        self, body: CompletionRequest, ctx: RequestContext, managed: ManagedModel
    ) -> tuple[list[Submission], list[str]]:
        ctx.model = managed.spec.id
        tokenizer = managed.loaded.tokenizer
        vocab = managed.loaded.tokenizer_vocab_size
        loop = asyncio.get_running_loop()
        prompts = await loop.run_in_executor(None, _prompts, body, tokenizer, vocab)
        if len(prompts) * body.n > self.settings.max_n * 16:
            raise errors.invalid_request(
                f"{len(prompts)} prompts × n={body.n} is more choices than allowed "
                f"({self.settings.max_n * 16}).",
                param="prompt",
            )
        plans = []
        for prompt in prompts:
            requested = body.max_tokens or DEFAULT_MAX_TOKENS
            max_tokens = resolve_max_tokens(requested, len(prompt), managed, self.settings)
            plans.append((prompt, sampling_params(body, max_tokens, vocab, body.logprobs)))
        echoes = [tokenizer.decode(p) if body.echo else "" for p, _ in plans]
        submissions: list[Submission] = []
        try:
            for prompt, params in plans:
                submissions.append(submit(managed, prompt, params, body.n, ctx.request_id))
        except errors.APIError:
            for sub in submissions:
                sub.cancel()
            raise
        return submissions, echoes

    async def complete(
        self, submissions: list[Submission], echoes: list[str], ctx: RequestContext
    ) -> dict[str, Any]:
        managed: ManagedModel = submissions[0].managed
        texts = TokenTexts(managed.loaded.tokenizer)
        choices: list[dict[str, Any]] = []
        prompt_total = completion_total = cached_total = 0
        try:
            for p, sub in enumerate(submissions):
                n = len(sub.requests)
                out = [echoes[p]] * n
                reasons: list[str | None] = [None] * n
                lps: list[list[TokenLogprob]] = [[] for _ in range(n)]
                async for item in merged_events(sub):
                    ctx.timer.observe(item, sub)  # metrics + request log
                    event = item.event
                    if isinstance(event, TextDelta):
                        out[item.index] += event.text
                        lps[item.index] += event.logprobs or []
                    elif isinstance(event, Finished):
                        reasons[item.index] = event.finish_reason
                        completion_total += event.completion_tokens
                        lps[item.index] += event.logprobs or []
                        if item.index == 0:
                            prompt_total += event.prompt_tokens
                            cached_total += event.cached_tokens
                    elif isinstance(event, Failed):
                        raise failure_error(event)
                want = sub.requests[0].params.logprobs is not None
                for i in range(n):
                    block = LegacyLogprobs(texts, len(echoes[p])).block(lps[i]) if want else None
                    choices.append({"index": p * n + i, "text": out[i], "logprobs": block,
                                    "finish_reason": reasons[i]})
        finally:
            for sub in submissions:
                sub.close()
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": ctx.model,
            "choices": choices,
            "usage": usage(prompt_total, completion_total, cached_total),
            "htdi": ctx.htdi(),
        }

    async def stream(
        self,
        submissions: list[Submission],
        echoes: list[str],
        ctx: RequestContext,
        include_usage: bool,
    ) -> AsyncIterator[Any]:
        managed: ManagedModel = submissions[0].managed
        texts = TokenTexts(managed.loaded.tokenizer)
        base = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                "created": int(time.time()), "model": ctx.model}
        n = len(submissions[0].requests)
        total = len(submissions) * n
        builders: dict[int, LegacyLogprobs] = {}
        want_logprobs = submissions[0].requests[0].params.logprobs is not None

        def chunk(index: int, text: str, finish: str | None, items) -> dict:
            block = None
            if items is not None and want_logprobs:
                builder = builders.setdefault(
                    index, LegacyLogprobs(texts, len(echoes[index // n]))
                )
                block = builder.block(items)
            out = {**base, "choices": [{"index": index, "text": text, "logprobs": block,
                                         "finish_reason": finish}]}
            if include_usage:
                out["usage"] = None
            return out

        ended = prompt_total = completion_total = cached_total = 0
        try:
            for p, echo in enumerate(echoes):
                if echo:
                    for i in range(n):
                        yield chunk(p * n + i, echo, None, None)
            async for item in merged_events(*submissions):
                ctx.timer.observe(item, submissions[item.source])  # metrics + request log
                index, event = item.source * n + item.index, item.event
                if isinstance(event, TextDelta):
                    yield chunk(index, event.text, None, event.logprobs or [])
                elif isinstance(event, PrefillProgress):
                    yield KEEP_ALIVE
                elif isinstance(event, Failed):
                    yield failure_error(event)
                    return
                elif isinstance(event, Finished):
                    ended += 1
                    completion_total += event.completion_tokens
                    if item.index == 0:
                        prompt_total += event.prompt_tokens
                        cached_total += event.cached_tokens
                    final = chunk(index, "", event.finish_reason, event.logprobs or [])
                    if ended == total and not include_usage:
                        final["htdi"] = ctx.htdi()
                    yield final
            if include_usage:
                yield {**base, "choices": [],
                       "usage": usage(prompt_total, completion_total, cached_total),
                       "htdi": ctx.htdi()}
        finally:
            for sub in submissions:
                sub.close()
