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

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from app.config import Settings
from app.core import errors
from app.core.context import RequestContext
from app.engine.lm.grammar import CompiledGrammar
from app.engine.lm.types import (
    Failed,
    Finished,
    PrefillProgress,
    PromptLogprobs,
    TextDelta,
    TokenLogprob,
)
from app.generation.cache_salt import cache_salt
from app.generation.events import (
    KEEP_ALIVE,
    ChoiceEnd,
    OutputEvent,
    PromptLogprobsOut,
    ReasoningOut,
    TextOut,
    ToolCallEnd,
    Usage,
)
from app.generation.limits import check_request_limits, resolve_max_tokens, sampling_params
from app.generation.prompt import check_prompt_options, prompt_tokens
from app.generation.reasoning import ReasoningSplitter, opens_thinking, think_markers
from app.generation.request import GenerationSpec, ToolCall
from app.generation.structured import compile_schema_within
from app.generation.submission import (
    Submission,
    failure_error,
    merged_events,
    next_group,
    submit,
)
from app.generation.text_size import check_spec_size, spec_chars, tokenize_bounded
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
    stop_sequences: list[str | None]  # the stop string that ended each choice, if one did
    prompt_logprobs: list[list[TokenLogprob | None] | None]
    reasoning: list[str | None]  # thinking per choice (None: the model did not think)


@dataclass
class Rendered:
    """Prompts as the model would see them: token ids and their text."""

    tokens: list[list[int]]
    texts: list[str]
    context_length: int


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
        splitters = self._reasoning_splitters()
        prompt_tokens = [0] * len(self.submissions)
        cached_tokens = [0] * len(self.submissions)
        completion_tokens = 0
        async for item in merged_events(*self.submissions):
            self.timer.observe(item, self.submissions[item.source])  # metrics + request log
            choice, event = item.source * n + item.index, item.event
            if isinstance(event, TextDelta):
                if splitters is None and calls is None:
                    yield TextOut(choice, event.text, event.logprobs)
                else:
                    pieces = (splitters[choice].feed(event.text) if splitters
                              else [(False, event.text)])
                    for out in _route(choice, pieces, event.logprobs, calls):
                        yield out
            elif isinstance(event, PrefillProgress):
                yield KEEP_ALIVE
            elif isinstance(event, PromptLogprobs):
                yield PromptLogprobsOut(choice, event.logprobs)
            elif isinstance(event, Failed):
                raise failure_error(event)
            elif isinstance(event, Finished):
                prompt_tokens[item.source] = event.prompt_tokens
                cached_tokens[item.source] = event.cached_tokens
                completion_tokens += event.completion_tokens
                reason, logprobs = event.finish_reason, event.logprobs
                if splitters is not None:
                    for out in _route(choice, splitters[choice].finish(), None, calls):
                        yield out
                if calls is not None:
                    owed, reason, held = calls[choice].finish(reason)
                    for out in owed:
                        yield out
                    logprobs = held + (logprobs or []) or None
                matched = event.stop_sequence if reason == "stop" else None
                yield ChoiceEnd(choice, reason, logprobs, matched)
        yield Usage(sum(prompt_tokens), completion_tokens, sum(cached_tokens))

    def _tool_streams(self) -> list[ToolCallStream] | None:
        """Per choice, the parser that tells tool calls from answer text (None: no tools)."""
        plan = self.tool_plan
        if plan is None:
            return None
        tools = [tool.template_entry() for tool in plan.tools]
        return [ToolCallStream(c, plan.mode, plan.names, self.tokenizer, tools)
                for c in range(self.choices)]

    def _reasoning_splitters(self) -> list[ReasoningSplitter] | None:
        """Per choice, the splitter of thinking from answer (None: a model that does not
        think, or raw prompts, whose output is the client's business)."""
        markers = think_markers(self.tokenizer) if self.spec.messages is not None else None
        if markers is None:
            return None
        start, end, start_id, end_id = markers
        return [ReasoningSplitter(start, end, open_at_start=opens_thinking(
                    self.prompts[c // self.spec.n], start_id, end_id))
                for c in range(self.choices)]

    async def collect(self) -> Collected:
        """Every event of the run gathered per choice; the run is closed afterwards."""
        n = self.choices
        out = Collected([""] * n, [None] * n, [None] * n, [[] for _ in range(n)],
                        Usage(0, 0, 0), [None] * n, [None] * n, [None] * n)
        try:
            async for event in self.events():
                if isinstance(event, TextOut):
                    out.texts[event.choice] += event.text
                    out.logprobs[event.choice] += event.logprobs or []
                elif isinstance(event, ReasoningOut):
                    out.reasoning[event.choice] = (out.reasoning[event.choice] or "") + event.text
                elif isinstance(event, ToolCallEnd):
                    out.calls[event.choice] = (out.calls[event.choice] or []) + [event.call]
                elif isinstance(event, ChoiceEnd):
                    out.finish_reasons[event.choice] = event.finish_reason
                    out.stop_sequences[event.choice] = event.stop_sequence
                    out.logprobs[event.choice] += event.logprobs or []
                elif isinstance(event, Usage):
                    out.usage = event
                elif isinstance(event, PromptLogprobsOut):
                    out.prompt_logprobs[event.choice] = event.logprobs
        finally:
            self.close()
        return out

    def close(self) -> None:
        """The response is complete (or abandoned): stop generating, give the model back."""
        for submission in self.submissions:
            submission.cancel()
        self.lease.release()


def _route(choice: int, pieces: list[tuple[bool, str]], logprobs: list[TokenLogprob] | None,
           calls: list[ToolCallStream] | None) -> list[OutputEvent]:
    """Reasoning pieces become :class:`ReasoningOut`; answer pieces answer text, or go
    through the choice's tool-call parser. Logprobs go with the first answer piece."""
    out: list[OutputEvent] = []
    for reasoning, piece in pieces:
        if reasoning:
            out.append(ReasoningOut(choice, piece))
        elif calls is None:
            out.append(TextOut(choice, piece, logprobs))
            logprobs = None
        else:
            out += calls[choice].feed(piece, logprobs)
            logprobs = None
    return out


class GenerationCore:
    """Turns neutral specs into queued runs on the right model's engine."""

    def __init__(self, manager: ModelManager, settings: Settings) -> None:
        self.manager = manager
        self.settings = settings

    async def start(self, spec: GenerationSpec, ctx: RequestContext) -> Run:
        """Validate, lease, render, tokenize and queue; raises APIError before any byte."""
        plan, lease = await self._checked_lease(spec, ctx)
        try:
            return await self._queue(spec, ctx, lease, plan)
        except BaseException:
            lease.release()
            raise

    async def count_prompt_tokens(self, spec: GenerationSpec, ctx: RequestContext) -> int:
        """How many tokens the spec's prompt(s) take, rendered (tools included) exactly as
        :meth:`start` would render them; nothing is generated."""
        rendered = await self.render(spec, ctx, texts=False)
        return sum(len(prompt) for prompt in rendered.tokens)

    async def _checked_lease(
        self, spec: GenerationSpec, ctx: RequestContext
    ) -> tuple[ToolPlan | None, ModelLease]:
        """The request's limits and tool plan checked, and its model leased."""
        ctx.model = spec.model
        check_request_limits(spec, self.settings)
        check_prompt_options(spec)
        plan = plan_tools(spec)
        if plan is not None and plan.mode != "auto" and spec.output_schema is not None:
            raise errors.invalid_request(
                f"A forced {spec.names.tool_choice} cannot be combined with a JSON "
                f"{spec.names.output_format}.",
                param=spec.names.tool_choice,
            )
        lease = self.manager.lease(spec.model, spec.capability)
        managed = await lease.acquire()
        ctx.model = managed.spec.id
        return plan, lease

    async def render(
        self, spec: GenerationSpec, ctx: RequestContext, texts: bool = True
    ) -> Rendered:
        """The prompt(s) ``start`` would queue, without generating (template debugging,
        token counting); the same checks, no context-length check. ``texts``: decode them
        too."""
        plan, lease = await self._checked_lease(spec, ctx)
        try:
            managed = lease.managed
            assert managed is not None
            tokens = await self._tokenize(spec, managed, plan)
            decode = managed.loaded.tokenizer.decode
            workers = self.settings.tokenize_workers
            text = [await tokenize_bounded(workers, 0, decode, ids) for ids in tokens
                    ] if texts else []
            return Rendered(tokens, text, managed.spec.context_length)
        finally:
            lease.release()

    async def _tokenize(
        self, spec: GenerationSpec, managed: ManagedModel, plan: ToolPlan | None
    ) -> list[list[int]]:
        """The spec's prompts as token ids: sizes checked first (a huge text is refused
        before any tokenizing), then tokenized on the bounded pool."""
        settings = self.settings
        check_spec_size(spec, managed.spec.context_length, settings.max_chars_per_token,
                        settings.max_sequences_per_request)
        return await tokenize_bounded(
            settings.tokenize_workers, sum(spec_chars(spec)), prompt_tokens, managed, spec, plan
        )

    async def _queue(
        self, spec: GenerationSpec, ctx: RequestContext, lease: ModelLease, plan: ToolPlan | None
    ) -> Run:
        managed = lease.managed
        assert managed is not None
        prompts = await self._tokenize(spec, managed, plan)
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
            markers = think_markers(managed.loaded.tokenizer) if spec.messages else None
            params = [
                replace(p, grammar=grammar, think=None if markers is None else (
                    markers[2], markers[3], opens_thinking(prompt, markers[2], markers[3])))
                for p, prompt in zip(params, prompts, strict=True)
            ]
        if spec.prompt_logprobs is not None:
            params = [replace(p, prompt_logprobs=spec.prompt_logprobs) for p in params]
        submissions: list[Submission] = []
        group = next_group()
        salt = cache_salt(ctx, spec, managed.spec, self.settings)
        try:
            for prompt, choice_params in zip(prompts, params, strict=True):
                submissions.append(
                    submit(managed, prompt, choice_params, spec.n, ctx.request_id,
                           group=group, client=ctx.client(), cache_salt=salt)
                )
        except errors.APIError:
            for submission in submissions:
                submission.cancel()
            raise
        return Run(spec, lease, prompts, submissions, plan, ctx.timer)

    async def _grammar(
        self, spec: GenerationSpec, managed: ManagedModel, plan: ToolPlan | None
    ) -> CompiledGrammar | None:
        """The grammar decoding must follow: the output schema, or a forced tool call.
        Every tool's parameter schema is compiled (and so validated) either way; each once
        per request, off the engine thread, within ``grammar_compile_timeout_s``."""
        timeout = self.settings.grammar_compile_timeout_s
        grammar = None
        if spec.output_schema is not None:
            grammar = await compile_schema_within(
                managed, spec.output_schema, spec.names.output_format, timeout
            )
        if plan is not None:
            call_grammar = await compile_schema_within(
                managed, call_schema(plan), spec.names.tools, timeout
            )
            if plan.mode in ("required", "named"):
                grammar = call_grammar
        return grammar
