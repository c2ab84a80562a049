"""One generation path for every dialect: a neutral spec in, a neutral event stream out.

:meth:`GenerationCore.start` validates a :class:`~app.generation.request.GenerationSpec`,
leases the model, renders and tokenizes the prompt(s), compiles grammars, and queues every
choice; errors surface as :class:`~app.core.errors.APIError` before any byte is sent.
:meth:`Run.events` then turns the engine's per-sequence events into
:mod:`app.generation.events`: answer text, tool calls as they are written
(:mod:`app.generation.tool_stream`), choice ends, keep-alives and a final usage event.
It also feeds the request's timer (metrics and the request log), so no dialect touches
engine events.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from app.config import Settings
from app.core import errors
from app.core.context import RequestContext
from app.engine.lm.types import (
    Failed,
    Finished,
    PrefillProgress,
    TextDelta,
    TokenLogprob,
)
from app.generation.cache_salt import cache_salt
from app.generation.events import (
    KEEP_ALIVE,
    ChoiceEnd,
    OutputEvent,
    TextOut,
    ToolCallEnd,
    Usage,
)
from app.generation.limits import check_request_limits, resolve_max_tokens, sampling_params
from app.generation.prompt import prompt_tokens
from app.generation.request import GenerationSpec, ToolCall
from app.generation.structured import compile_schema
from app.generation.submission import Submission, failure_error, merged_events, submit
from app.generation.tool_stream import ToolCallStream
from app.generation.tools import ToolPlan, call_schema, plan_tools
from app.lifecycle.manager import ManagedModel, ModelLease, ModelManager


@dataclass
class Collected:
    """A whole run's results per choice (for dialects that answer in one JSON body)."""

    texts: list[str]
    calls: list[list[ToolCall] | None]
    finish_reasons: list[str | None]
    logprobs: list[list[TokenLogprob]]
    usage: Usage


@dataclass
class Run:
    """A queued request: its submissions (one per prompt) and the lease on its model."""

    spec: GenerationSpec
    lease: ModelLease
    prompts: list[list[int]]
    submissions: list[Submission]
    tool_plan: ToolPlan | None
    timer: Any

    @property
    def managed(self) -> ManagedModel:
        assert self.lease.managed is not None  # a run exists only once its model is leased
        return self.lease.managed

    @property
    def tokenizer(self) -> Any:
        return self.managed.loaded.tokenizer

    @property
    def choices(self) -> int:
        return len(self.prompts) * self.spec.n

    async def events(self) -> AsyncIterator[OutputEvent]:
        """Neutral events until every choice has ended, then :class:`Usage`. A failed
        sequence raises its :class:`~app.core.errors.APIError`."""
        n = self.spec.n
        calls = self._tool_streams()
        prompt_tokens = [0] * len(self.submissions)
        cached_tokens = [0] * len(self.submissions)
        completion_tokens = 0
        async for item in merged_events(*self.submissions):
            self.timer.observe(item, self.submissions[item.source])  # metrics + request log
            choice, event = item.source * n + item.index, item.event
            if isinstance(event, TextDelta):
                if calls is None:
                    yield TextOut(choice, event.text, event.logprobs)
                else:
                    for out in calls[choice].feed(event.text, event.logprobs):
                        yield out
            elif isinstance(event, PrefillProgress):
                yield KEEP_ALIVE
            elif isinstance(event, Failed):
                raise failure_error(event)
            elif isinstance(event, Finished):
                prompt_tokens[item.source] = event.prompt_tokens
                cached_tokens[item.source] = event.cached_tokens
                completion_tokens += event.completion_tokens
                reason, logprobs = event.finish_reason, event.logprobs
                if calls is not None:
                    owed, reason, held = calls[choice].finish(reason)
                    for out in owed:
                        yield out
                    logprobs = held + (logprobs or []) or None
                yield ChoiceEnd(choice, reason, logprobs)
        yield Usage(sum(prompt_tokens), completion_tokens, sum(cached_tokens))

    def _tool_streams(self) -> list[ToolCallStream] | None:
        """Per choice, the parser that tells tool calls from answer text (None: no tools)."""
        plan = self.tool_plan
        if plan is None:
            return None
        tools = [tool.template_entry() for tool in plan.tools]
        return [ToolCallStream(c, plan.mode, plan.names, self.tokenizer, tools)
                for c in range(self.choices)]

    async def collect(self) -> Collected:
        """Every event of the run gathered per choice; the run is closed afterwards."""
        n = self.choices
        out = Collected([""] * n, [None] * n, [None] * n, [[] for _ in range(n)],
                        Usage(0, 0, 0))
        try:
            async for event in self.events():
                if isinstance(event, TextOut):
                    out.texts[event.choice] += event.text
                    out.logprobs[event.choice] += event.logprobs or []
                elif isinstance(event, ToolCallEnd):
                    out.calls[event.choice] = (out.calls[event.choice] or []) + [event.call]
                elif isinstance(event, ChoiceEnd):
                    out.finish_reasons[event.choice] = event.finish_reason
                    out.logprobs[event.choice] += event.logprobs or []
                elif isinstance(event, Usage):
                    out.usage = event
        finally:
            self.close()
        return out

    def close(self) -> None:
        """The response is complete (or abandoned): stop generating, give the model back."""
        for submission in self.submissions:
            submission.cancel()
        self.lease.release()


class GenerationCore:
    """Turns neutral specs into queued runs on the right model's engine."""

    def __init__(self, manager: ModelManager, settings: Settings) -> None:
        self.manager = manager
        self.settings = settings

    async def start(self, spec: GenerationSpec, ctx: RequestContext) -> Run:
        """Validate, lease, render, tokenize and queue; raises APIError before any byte."""
        ctx.model = spec.model
        check_request_limits(spec, self.settings)
        plan = plan_tools(spec)
        if plan is not None and plan.mode != "auto" and spec.output_schema is not None:
            raise errors.invalid_request(
                f"A forced {spec.names.tool_choice} cannot be combined with a JSON "
                f"{spec.names.output_format}.",
                param=spec.names.tool_choice,
            )
        lease = self.manager.lease(spec.model, spec.capability)
        managed = await lease.acquire()
        try:
            ctx.model = managed.spec.id
            return await self._queue(spec, ctx, lease, plan)
        except BaseException:
            lease.release()
            raise

    async def count_tokens(self, spec: GenerationSpec, ctx: RequestContext) -> int:
        """Prompt tokens ``spec`` would take (template, tools and all), without generating."""
        ctx.model = spec.model
        check_request_limits(spec, self.settings)
        plan = plan_tools(spec)
        async with self.manager.lease(spec.model, spec.capability) as managed:
            ctx.model = managed.spec.id
            loop = asyncio.get_running_loop()
            prompts = await loop.run_in_executor(None, prompt_tokens, managed, spec, plan)
        return sum(len(prompt) for prompt in prompts)

    async def _queue(
        self, spec: GenerationSpec, ctx: RequestContext, lease: ModelLease, plan: ToolPlan | None
    ) -> Run:
        managed = lease.managed
        assert managed is not None
        loop = asyncio.get_running_loop()
        prompts = await loop.run_in_executor(None, prompt_tokens, managed, spec, plan)
        if len(prompts) * spec.n > self.settings.max_n * 16:
            raise errors.invalid_request(
                f"{len(prompts)} prompts × n={spec.n} is more choices than allowed "
                f"({self.settings.max_n * 16}).",
                param=spec.names.prompt,
            )
        vocab = managed.loaded.tokenizer_vocab_size
        params = [
            sampling_params(
                spec.sampling,
                resolve_max_tokens(
                    spec.max_tokens, len(prompt), managed, self.settings, spec.names
                ),
                vocab,
                spec.logprobs,
            )
            for prompt in prompts
        ]
        grammar = await self._grammar(spec, managed, plan)
        if grammar is not None:
            params = [replace(p, grammar=grammar) for p in params]
        submissions: list[Submission] = []
        salt = cache_salt(ctx, spec, managed.spec, self.settings)
        try:
            for prompt, choice_params in zip(prompts, params, strict=True):
                submissions.append(
                    submit(managed, prompt, choice_params, spec.n, ctx.request_id, salt)
                )
        except errors.APIError:
            for submission in submissions:
                submission.cancel()
            raise
        return Run(spec, lease, prompts, submissions, plan, ctx.timer)

    async def _grammar(
        self, spec: GenerationSpec, managed: ManagedModel, plan: ToolPlan | None
    ) -> str | None:
        """The grammar decoding must follow: the output schema, or a forced tool call.
        Every tool's parameter schema is compiled (and so validated) either way."""
        loop = asyncio.get_running_loop()
        grammar = None
        if spec.output_schema is not None:
            grammar = await loop.run_in_executor(
                None, compile_schema, managed, spec.output_schema, spec.names.output_format
            )
        if plan is not None:
            call_grammar = await loop.run_in_executor(
                None, compile_schema, managed, call_schema(plan), spec.names.tools
            )
            if plan.mode in ("required", "named"):
                grammar = call_grammar
        return grammar

