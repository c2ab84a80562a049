"""Decode steps and prompt prefills as separate ``next()`` calls, so tokens are not held back.

mlx-lm's ``BatchGenerator.next()`` decodes one step for the running batch, then prefills the
waiting prompts, then returns both.  The tokens of that decode step (among them the first
tokens of sequences that just finished their prefill) therefore reach the caller only after
the other prompts' prefill: with 8 running streams and 8 new 150-token prompts, ~3 s late on
two CPU cores.  :class:`PhasedBatchGenerator` runs one phase per call while both kinds of
work exist, alternating:

- ``decode``: the running batch steps, nothing else (the call returns right after it);
- ``prompt``: waiting prompts are admitted and prefilled, the running batch does not step.
  When sequences have finished their prefill, the phase only moves them into the running
  batch (no new admissions), so the next ``decode`` returns their first tokens before any
  further prefill. That move comes right after the prefill, not after one more decode step
  of the others (~150 ms at batch 8 on two CPU cores).

With only one kind of work the call is the stock one, except that a call which finds
finished prefills only moves them (no other prompt's chunk in the same call).  Each prefill
call's chunk comes from a time budget (:mod:`app.engine.lm.chunking`), so a long prompt is
prefilled in pieces between decode steps and other prompts' prefills.  Scheduling only:
every token is the one the stock generator would produce.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any, Literal

import mlx.core as mx
from mlx_lm.generate import BatchGenerator, GenerationBatch

from app.engine.lm.chunking import PrefillBudget
from app.engine.lm.eager_tokens import EagerTokenBatch
from app.engine.lm.prompt_scores import PromptScorer, scoring

Phase = Literal["decode", "prompt", "both"]


def _no_step() -> list:
    return []


class PhasedBatchGenerator(BatchGenerator):
    """A ``BatchGenerator`` whose ``next()`` does a decode step or a prefill, not both."""

    def __init__(self, *args: Any, split_phases: bool = True, eager_tokens: bool | None = None,
                 prefill_chunk_s: float = 0.0, **kwargs: Any) -> None:
        """``eager_tokens``: decode steps return tokens as soon as they are computed
        (:mod:`app.engine.lm.eager_tokens`); default: when the generator's stream is the CPU's.
        ``prefill_chunk_s``: seconds one prefill call should take (0: ``prefill_step_size``
        tokens per call, mlx-lm's chunks)."""
        super().__init__(*args, **kwargs)
        self.split_phases = split_phases
        self.budget = PrefillBudget(prefill_chunk_s, self.prefill_step_size)
        self._last_phase: Phase = "both"
        if type(self._generation_batch) is GenerationBatch:
            self._generation_batch.__class__ = EagerTokenBatch
        if eager_tokens is None:
            eager_tokens = self.stream.device == mx.cpu
        self._generation_batch.eager = eager_tokens
        self.prompt_scores = PromptScorer()  # prompt logprobs, taken during the prefill
        scoring(self._prompt_batch, self.prompt_scores)

    def _make_batch(self, n: int) -> Any:
        return scoring(super()._make_batch(n), self.prompt_scores)

    def remove(self, uids: Any, return_prompt_caches: bool = False) -> dict:
        uids = list(uids)
        self.prompt_scores.drop(uids)
        return super().remove(uids, return_prompt_caches)

    def _has_decode_work(self) -> bool:
        return len(self._generation_batch) > 0

    def prompts_waiting(self) -> bool:
        """Prompts inserted and not yet decoding (waiting for or in their prefill)."""
        return bool(self._unprocessed_sequences) or len(self._prompt_batch) > 0

    def prompts_pending(self) -> int:
        """How many inserted sequences wait for or are in their prefill."""
        return len(self._unprocessed_sequences) + len(self._prompt_batch)

    def _has_prompt_work(self) -> bool:
        return self.prompts_waiting() and len(self._generation_batch) < self.completion_batch_size

    def _prefills_done(self) -> bool:
        """Whether some prompt-batch sequence has only its last token left (ready to decode)."""
        return any(
            len(segments) == 1 and len(segments[0]) == 1
            for segments, *_ in self._currently_processing
        )

    def choose_phase(self) -> Phase:
        if self.split_phases and self._prefills_done():
            phase: Phase = "prompt"  # only the move, even with nothing decoding
        elif not self.split_phases or not (self._has_decode_work() and self._has_prompt_work()):
            phase = "both"
        elif self._prefills_done():
            phase = "prompt"  # move them into the batch now: the next decode has their tokens
        else:
            phase = "prompt" if self._last_phase == "decode" else "decode"
        self._last_phase = phase
        return phase

    def _prefill_rows(self) -> int:
        """Prompts the next prefill call will process together (admissions included)."""
        admit = min(self.prefill_batch_size - len(self._prompt_batch),
                    self.completion_batch_size - len(self._generation_batch),
                    len(self._unprocessed_sequences))
        return len(self._prompt_batch) + max(0, admit)

    def _timed_prompt(self, step: int) -> Any:
        """The prompt batch's ``prompt`` for this call: timed for the budget, skipped when
        the call moves finished prefills only (no row has tokens)."""
        batch = self._prompt_batch
        stock = type(batch).prompt

        def prompt(tokens: list[list[int]]) -> None:
            longest = max((len(t) for t in tokens), default=0)
            if longest == 0:
                return
            batch.prefill_step_size = max(step, longest)  # one model call per chunk
            started = time.perf_counter()
            stock(batch, tokens)
            self.budget.observe(len(tokens) * longest, time.perf_counter() - started)

        return prompt

    @contextlib.contextmanager
    def _limited_to(self, phase: Phase) -> Iterator[None]:
        batch, saved = self._generation_batch, (self.completion_batch_size, self.prefill_batch_size)
        step = self.prefill_step_size
        if phase == "decode":
            self.completion_batch_size = 0  # stock next() returns right after the decode step
        elif self.split_phases:
            if phase == "prompt":
                batch.next = _no_step  # instance attribute: this call does not step the batch
            if self._prefills_done():
                self.prefill_batch_size = len(self._prompt_batch)  # move them, admit no one
                self.prefill_step_size = 0  # and prefill nothing else in this call
        if phase != "decode" and self.prefill_step_size:
            self.prefill_step_size = self.budget.chunk(self._prefill_rows())
        self._prompt_batch.prompt = self._timed_prompt(step)
        try:
            yield
        finally:
            self.completion_batch_size, self.prefill_batch_size = saved
            self.prefill_step_size = step
            batch.__dict__.pop("next", None)
            self._prompt_batch.__dict__.pop("prompt", None)

    def run_phase(self, phase: Phase) -> tuple[list, list]:
        with self._limited_to(phase):
            return super()._next()

    def _next(self) -> tuple[list, list]:
        return self.run_phase(self.choose_phase())
