"""What chat and legacy completions share: limits, sampling params, submit, event streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from app.config import Settings
from app.core import errors
from app.engine.lm.types import (
    Failed,
    Finished,
    GenerationRequest,
    PrefillProgress,
    SamplingParams,
    TextDelta,
)
from app.engine.lm.worker import EngineStoppedError, QueueFullError
from app.lifecycle.manager import ManagedModel
from app.schemas.openai import SamplingFields

DEFAULT_TEMPERATURE = 1.0  # OpenAI's default


def resolve_max_tokens(
    requested: int | None, prompt_tokens: int, managed: ManagedModel, settings: Settings
) -> int:
    """Apply the model's cap and context length; never silently truncate a request."""
    spec = managed.spec
    cap = spec.limits.max_tokens or settings.max_tokens_default
    context = spec.context_length
    if requested is not None and requested > cap:
        raise errors.invalid_request(
            f"max_tokens is {requested}, but this model allows at most {cap} completion tokens.",
            param="max_tokens",
            code="max_tokens_exceeded",
        )
    if requested is None:
        if prompt_tokens >= context:
            raise errors.context_length_exceeded(prompt_tokens, 1, context)
        return min(cap, context - prompt_tokens)
    if prompt_tokens + requested > context:
        raise errors.context_length_exceeded(prompt_tokens, requested, context)
    return requested


def check_common_limits(body: SamplingFields, settings: Settings) -> None:
    if body.n > settings.max_n:
        raise errors.invalid_request(
            f"n is {body.n}, but at most {settings.max_n} choices are allowed.", param="n"
        )
    if body.stop and len(body.stop) > settings.max_stop_sequences:
        raise errors.invalid_request(
            f"stop has {len(body.stop)} sequences; at most {settings.max_stop_sequences} "
            "are allowed.",
            param="stop",
        )


def sampling_params(
    body: SamplingFields, max_tokens: int, vocab_size: int, logprobs: int | None = None
) -> SamplingParams:
    for token in body.stop_token_ids or ():
        if not 0 <= token < vocab_size:
            raise errors.invalid_request(
                f"stop_token_ids contains {token}, outside the vocabulary (size {vocab_size}).",
                param="stop_token_ids",
            )
    if body.min_tokens > max_tokens:
        raise errors.invalid_request(
            f"min_tokens ({body.min_tokens}) must not exceed max_tokens ({max_tokens}).",
            param="min_tokens",
        )
    bias: list[tuple[int, float]] = []
    for key, value in (body.logit_bias or {}).items():
        token = int(key)
        if not 0 <= token < vocab_size:
            raise errors.invalid_request(
                f"logit_bias token id {token} is outside the vocabulary (size {vocab_size}).",
                param="logit_bias",
            )
        bias.append((token, value))
    temperature = DEFAULT_TEMPERATURE if body.temperature is None else body.temperature
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=body.top_k if body.top_k and body.top_k < vocab_size else 0,  # >= vocab: all
        min_p=body.min_p or 0.0,
        seed=None if body.seed is None else body.seed % 2**64,  # mx.random.key: uint64
        stop=tuple(body.stop or ()),
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        repetition_penalty=body.repetition_penalty or 1.0,
        logit_bias=tuple(bias),
        ignore_eos=body.ignore_eos,
        min_tokens=body.min_tokens,
        stop_token_ids=tuple(body.stop_token_ids or ()),
        logprobs=logprobs,
        speculative=body.speculative,
    )


def choice_params(params: SamplingParams, index: int) -> SamplingParams:
    """Choice ``index`` of ``n``: a seeded request gets distinct but reproducible seeds."""
    if params.seed is None or index == 0:
        return params
    from dataclasses import replace

    return replace(params, seed=(params.seed + index) % 2**64)


@dataclass
class Submission:
    """The ``n`` engine requests behind one API request."""

    managed: ManagedModel
    requests: list[GenerationRequest]
    tool_plan: Any = None  # app.handler.tools.ToolPlan when tools are in play
    release: Callable[[], None] | None = None  # returns the model lease, once

    def cancel(self) -> None:
        engine = self.managed.engine
        for request in self.requests:
            if not request.cancelled and engine is not None:
                engine.cancel(request)

    def close(self) -> None:
        """The response is complete (or abandoned): stop generating, give the model back."""
        self.cancel()
        release, self.release = self.release, None
        if release is not None:
            release()


def submit(
    managed: ManagedModel, prompt: list[int], params: SamplingParams, n: int, request_id: str
) -> Submission:
    loop = asyncio.get_running_loop()
    requests = [
        GenerationRequest(
            prompt_tokens=prompt,
            params=choice_params(params, i),
            loop=loop,
            request_id=request_id,
        )
        for i in range(n)
    ]
    submission = Submission(managed, [])
    try:
        for request in requests:
            managed.engine.submit(request)
            submission.requests.append(request)
    except QueueFullError as exc:
        submission.cancel()
        raise errors.queue_full(str(exc)) from exc
    except EngineStoppedError as exc:
        submission.cancel()
        raise errors.APIError(503, str(exc), type="server_error", code="shutting_down") from exc
    return submission


@dataclass
class ChoiceEvent:
    index: int  # choice within its submission
    event: TextDelta | Finished | Failed | PrefillProgress
    source: int = 0  # which of the merged submissions


async def merged_events(*submissions: Submission) -> AsyncIterator[ChoiceEvent]:
    """Interleave the events of every choice of ``submissions`` in arrival order until each
    has ended."""
    streams = [(source, index, request.events)
               for source, sub in enumerate(submissions)
               for index, request in enumerate(sub.requests)]
    if len(streams) == 1:  # the common case needs no task per event
        queue = streams[0][2]
        while True:
            event = await queue.get()
            yield ChoiceEvent(0, event)
            if isinstance(event, Finished | Failed):
                return
    pending: dict[asyncio.Task, int] = {}

    def watch(stream: int) -> None:
        pending[asyncio.ensure_future(streams[stream][2].get())] = stream

    for stream in range(len(streams)):
        watch(stream)
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(done, key=lambda t: pending[t]):
                stream = pending.pop(task)
                event = task.result()
                source, index, _ = streams[stream]
                yield ChoiceEvent(index, event, source)
                if not isinstance(event, Finished | Failed):
                    watch(stream)
    finally:
        for task in pending:
            task.cancel()


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


KEEP_ALIVE = object()  # stream marker: the API layer writes an SSE comment


def failure_error(event: Failed) -> errors.APIError:
    kind = "server_error" if event.status >= 500 else "invalid_request_error"
    return errors.APIError(event.status, event.message, type=kind, code=event.code)
