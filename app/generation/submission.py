"""Engine submissions: the ``n`` sequences behind one prompt, and their merged events."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass

from app.core import errors
from app.engine.base import EngineStoppedError, QueueFullError
from app.engine.lm.types import (
    Failed,
    Finished,
    GenerationRequest,
    PrefillProgress,
    SamplingParams,
    TextDelta,
)
from app.generation.limits import choice_params
from app.lifecycle.manager import ManagedModel

_groups = itertools.count(1)


def next_group() -> int:
    """A fresh id for one API request's sequences (the engine's fairness unit)."""
    return next(_groups)


@dataclass
class Submission:
    """The ``n`` engine requests behind one prompt of an API request."""

    managed: ManagedModel
    requests: list[GenerationRequest]

    def cancel(self) -> None:
        """Stop generating (the response is complete or abandoned)."""
        engine = self.managed.engine
        for request in self.requests:
            if not request.cancelled and engine is not None:
                engine.cancel(request)


def submit(
    managed: ManagedModel, prompt: list[int], params: SamplingParams, n: int, request_id: str,
    *, group: int = 0, client: str = "", cache_salt: str = "",
) -> Submission:
    """Queue ``n`` choices of one prompt; a full or stopped engine takes none of them.
    ``group``: the API request (:func:`next_group`), ``client``: its tenant
    (:meth:`RequestContext.client`), ``cache_salt``: its prefix-cache namespace."""
    loop = asyncio.get_running_loop()
    group = group or next_group()
    requests = [
        GenerationRequest(
            prompt_tokens=prompt,
            params=choice_params(params, i),
            loop=loop,
            request_id=request_id,
            group=group,
            client=client,
            cache_salt=cache_salt,
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


def failure_error(event: Failed) -> errors.APIError:
    """The API error a failed sequence reports."""
    kind = "server_error" if event.status >= 500 else "invalid_request_error"
    return errors.APIError(event.status, event.message, type=kind, code=event.code)
