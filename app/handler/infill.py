"""llama.cpp's ``/infill`` dialect: a prefix, a suffix and other files' text in, the middle
out, as llama.cpp's ``/completion`` shape (``content``, ``stop``, token counts)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from app.core import errors
from app.core.context import RequestContext
from app.generation.core import GenerationCore, Run
from app.generation.events import KEEP_ALIVE, ChoiceEnd, TextOut, Usage
from app.generation.fim import FillInMiddle
from app.generation.request import FieldNames, GenerationSpec, Sampling
from app.schemas.infill import InfillRequest


def infill_spec(body: InfillRequest) -> GenerationSpec:
    """The neutral request: one prompt (the prefix) filled in the middle."""
    if body.stop and any(not s for s in body.stop):
        raise errors.invalid_request("stop sequences must be non-empty strings.", param="stop")
    return GenerationSpec(
        model=body.model,
        capability="completions",
        sampling=Sampling(
            temperature=body.temperature, top_p=body.top_p, top_k=body.top_k,
            min_p=body.min_p, seed=body.seed, stop=tuple(body.stop or ()),
            presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
            repetition_penalty=body.repeat_penalty,
        ),
        max_tokens=None if body.n_predict in (None, -1) else body.n_predict,
        prompts=[body.input_prefix],
        fim=FillInMiddle(
            suffix=body.input_suffix,
            extra=tuple((c.filename, c.text) for c in body.input_extra),
            middle=body.prompt,
        ),
        names=FieldNames(prompt="input_prefix", max_tokens="n_predict", suffix="input_suffix"),
    )


def _end(ctx: RequestContext, reason: str | None, usage: Usage) -> dict[str, Any]:
    return {"stop": True, "finish_reason": reason, "model": ctx.model,
            "tokens_predicted": usage.completion_tokens,
            "tokens_evaluated": usage.prompt_tokens,
            "tokens_cached": usage.cached_tokens}


class InfillHandler:
    def __init__(self, core: GenerationCore) -> None:
        self.core = core

    async def prepare(self, body: InfillRequest, ctx: RequestContext) -> Run:
        return await self.core.start(infill_spec(body), ctx)

    async def complete(self, run: Run, ctx: RequestContext) -> dict[str, Any]:
        result = await run.collect()
        return {"content": result.texts[0],
                **_end(ctx, result.finish_reasons[0], result.usage), "htdi": ctx.htdi()}

    async def stream(self, run: Run, ctx: RequestContext) -> AsyncIterator[Any]:
        """``{"content": ..., "stop": false}`` per piece, then one ``stop: true`` object."""
        reason = None
        try:
            async for event in run.events():
                if isinstance(event, TextOut):
                    yield {"content": event.text, "stop": False}
                elif isinstance(event, ChoiceEnd):
                    reason = event.finish_reason
                elif isinstance(event, Usage):
                    yield {"content": "", **_end(ctx, reason, event), "htdi": ctx.htdi()}
                elif event is KEEP_ALIVE:
                    yield KEEP_ALIVE
        finally:
            run.close()
