"""Prompt-lookup speculative decoding; this module: the latency-bound case, one sequence.

(Two or more running sequences speculate together through
:mod:`app.engine.lm.batch_speculation`, hooked into the same generator.)

:class:`SpeculativeBatchGenerator` is a drop-in :class:`mlx_lm.generate.BatchGenerator`. While
exactly one sequence is decoding, nothing waits to be prefilled and the sequence is eligible
(no logits processors, plain KV caches, ``allow(uid)``), the sequence leaves the
``GenerationBatch`` for a *solo* path:

- **draft**: :class:`PromptLookup` finds the latest earlier occurrence of the last ``n`` tokens
  of the context (prompt + output; ``n`` from ``ngram_max`` down to ``ngram_min``) and proposes
  the up to ``k`` tokens that followed it. No draft model.
- **verify**: one forward pass over ``[pending token] + draft`` (a ``(1, 1 + k)`` input; on the
  CPU it costs ~1.2-1.5x a one-token step, since decode is bound by reading the weights);
  the longest prefix of the draft that equals the model's choice at each position is
  accepted, plus the model's own next token, so every step emits at least one token. Greedy:
  the choices are the argmaxes. Sampling: the sequence's sampler draws position by
  position until a draw differs from the draft (:func:`_sample_until_mismatch`).
- **rewind**: the KV cache is trimmed by the rejected draft length.
- **pacing**: after 3 wholly rejected drafts in a row, drafting pauses for 4, 8, ... 32 steps
  (verifying 1 + k tokens is not free); a sampled sequence's drafts start at 2 tokens and
  double while wholly accepted (a draft token survives with probability p(token) only).

Greedy output is the non-speculative greedy output, and a seeded sampled request gives its
non-speculative text, up to floating-point ties (verifying ``1 + k`` positions in one matmul
may round differently from ``k`` one-row matmuls, as batching does); unseeded sampling keeps
its distribution. Logits processors (penalties, bias, grammars: stateful or context-bound)
and rotating or quantized caches stay on the batch path. When a second sequence arrives, the
solo sequence goes back into the ``GenerationBatch`` (same uid, sampler, matcher and token
count), so continuous batching is unchanged. The caller sees the same ``next()`` /
``remove()`` / ``extract_cache()`` API; a solo step simply returns several responses for one
uid, in order. Tokens after the one that ends a sequence (stop token, ``max_tokens``) are
never returned. :attr:`SpeculativeBatchGenerator.spec_stats` counts drafts and acceptances.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
from mlx_lm.generate import GenerationBatch, StopSequences, _merge_caches
from mlx_lm.models.cache import BatchKVCache, KVCache
from mlx_lm.sample_utils import greedy_sampler

from app.engine.lm.batch_speculation import (
    BatchSpeculation,
    HoleyBatchKVCache,
    SpeculativeGenerationBatch,
)
from app.engine.lm.drafting import (
    Drafter,
    PromptLookup,
    SpeculativeStats,
    accepted_prefix,
    row_logprobs,
)
from app.engine.lm.phases import PhasedBatchGenerator

__all__ = ["PromptLookup", "SpeculativeBatchGenerator", "SpeculativeStats", "accepted_prefix"]


@dataclass(eq=False)
class _Solo:
    uid: int
    cache: list[KVCache]  # holds exactly `tokens`
    tokens: list[int]
    pending: int  # the last token returned: chosen by the model, not yet in the cache
    pending_logprobs: mx.array
    sampler: Any
    processors: Any
    stop_sequences: StopSequences
    matcher: Any
    num_tokens: int
    max_tokens: int
    drafter: Drafter


class SpeculativeBatchGenerator(PhasedBatchGenerator):
    """A ``BatchGenerator`` that decodes a lone sequence with prompt-lookup drafts (and runs
    decode steps and prefills as separate calls: :mod:`app.engine.lm.phases`)."""

    def __init__(
        self,
        model: Any,
        *,
        num_draft: int = 8,
        ngram_max: int = 3,
        ngram_min: int = 2,
        allow: Callable[[int], bool] | None = None,
        stats: SpeculativeStats | None = None,
        batched: bool = True,
        **kwargs: Any,
    ) -> None:
        """``num_draft``: most draft tokens per step (0: never speculate); ``allow(uid)``:
        whether that sequence may speculate (per-request opt-out); ``stats``: counters to add
        to (kept by the caller across generator replacements); ``batched``: speculate in
        batches of two or more too (:mod:`app.engine.lm.batch_speculation`); other arguments as
        ``PhasedBatchGenerator`` (``split_phases``) and ``BatchGenerator``."""
        super().__init__(model, **kwargs)
        self.num_draft = num_draft
        self.ngrams = (ngram_max, ngram_min)
        self.allow = allow
        self.spec_stats = stats if stats is not None else SpeculativeStats()
        self._solo: _Solo | None = None
        if batched:
            self._generation_batch.__class__ = SpeculativeGenerationBatch
            self._generation_batch.speculation = BatchSpeculation(self)

    # ---- public API overrides -------------------------------------------------------
    def _has_decode_work(self) -> bool:
        return self._solo is not None or super()._has_decode_work()

    def _next(self) -> tuple[list, list]:
        phase = self.choose_phase()
        solo_responses: list[GenerationBatch.Response] = []
        if self._solo is not None and phase != "prompt":
            tic = time.perf_counter()
            solo_responses = self._solo_step()
            self._counters.decode_time += time.perf_counter() - tic
            self._counters.generation_tokens += len(solo_responses)
            self._counters.generation_steps += 1
        prompt_responses, generation_responses = self.run_phase(phase)
        if self._solo is not None and len(self._generation_batch) > 0:
            self._leave_solo()  # others finished their prefill: batch again
        elif self._solo is None and self._eligible():
            entered = self._enter_solo()  # after the sequence's batch token, in order
            self._counters.generation_tokens += len(entered)
            generation_responses += entered
        return prompt_responses, solo_responses + generation_responses

    def remove(self, uids: Any, return_prompt_caches: bool = False) -> dict:
        uids = list(uids)
        caches: dict = {}
        solo = self._solo
        if solo is not None and solo.uid in uids:
            if return_prompt_caches:
                caches[solo.uid] = (solo.cache, solo.tokens)
            self._solo = None
            uids.remove(solo.uid)
        caches.update(super().remove(uids, return_prompt_caches))
        return caches

    def extract_cache(self, uids: Any) -> dict:
        uids = list(uids)
        results: dict = {}
        solo = self._solo
        if solo is not None and solo.uid in uids:
            results[solo.uid] = (solo.cache, solo.tokens)
            uids.remove(solo.uid)
        results.update(super().extract_cache(uids))
        return results

    @property
    def prompt_cache_nbytes(self) -> int:
        total = super().prompt_cache_nbytes
        if self._solo is not None:
            total += sum(c.nbytes for c in self._solo.cache)
        return total

    def new_drafter(self, context: list[int], sampler: Any) -> Drafter:
        return Drafter(PromptLookup(context, *self.ngrams), sampled=sampler is not greedy_sampler)

    # ---- moving a sequence in and out of the batch --------------------------------------
    def _eligible(self) -> bool:
        batch = self._generation_batch
        if self.num_draft <= 0 or len(batch) != 1 or self._unprocessed_sequences:
            return False
        if len(self._prompt_batch) > 0 or batch._next_tokens is None:
            return False
        if batch.logits_processors and batch.logits_processors[0]:
            return False
        if batch.max_tokens[0] - batch._num_tokens[0] < 2:
            return False
        if self.allow is not None and not self.allow(batch.uids[0]):
            return False
        return all(type(c) in (BatchKVCache, HoleyBatchKVCache) for c in batch.prompt_cache)

    def _enter_solo(self) -> list[GenerationBatch.Response]:
        """Take the lone sequence out of the batch and return its already sampled next token
        at once (the batch path would return it one step later)."""
        batch = self._generation_batch
        cache = batch.extract_cache(0)
        # extract() gives lazy slices of the batch buffers: materialize so those are freed
        mx.eval(batch._next_tokens, [c.state for c in cache])
        tokens, pending = list(batch.tokens[0]), int(batch._next_tokens[0].item())
        sampler = (batch.samplers[0] if batch.samplers else None) or batch.fallback_sampler
        solo = self._solo = _Solo(
            uid=batch.uids[0],
            cache=cache,
            tokens=tokens,
            pending=pending,
            pending_logprobs=batch._next_logprobs[0],
            sampler=sampler,
            processors=batch.logits_processors[0] if batch.logits_processors else (),
            stop_sequences=batch.stop_sequences[0],
            matcher=batch._matchers[0],
            num_tokens=batch._num_tokens[0],
            max_tokens=batch.max_tokens[0],
            drafter=self.new_drafter(tokens + [pending], sampler),
        )
        batch.filter([])
        self.spec_stats.solo_entries += 1
        return [self._respond(solo, solo.pending, solo.pending_logprobs)]

    def _leave_solo(self) -> None:
        """Hand the sequence back to the GenerationBatch; its first step feeds `pending`."""
        solo = self._solo
        assert solo is not None
        self._solo = None
        self.spec_stats.solo_exits += 1
        batch = GenerationBatch(
            self.model,
            [solo.uid],
            mx.array([solo.pending]),
            _merge_caches([solo.cache]),
            [solo.tokens],
            [solo.sampler],
            self.sampler,
            [solo.processors],
            [solo.stop_sequences],
            [solo.max_tokens],
        )
        batch._matchers[0] = solo.matcher
        batch._num_tokens[0] = solo.num_tokens
        self._generation_batch.extend(batch)

    # ---- the solo step -----------------------------------------------------------------
    def _respond(self, solo: _Solo, token: int, logprobs: mx.array) -> GenerationBatch.Response:
        """Count one returned token; on a finish, drop the solo state (cache holds `tokens`)."""
        solo.num_tokens += 1
        reason = None
        if solo.num_tokens >= solo.max_tokens:
            reason = "length"
        if solo.matcher.advance(token):
            reason = "stop"
        if reason is None:
            return GenerationBatch.Response(solo.uid, token, logprobs, None, None, None)
        self._solo = None
        return GenerationBatch.Response(
            solo.uid, token, logprobs, reason, solo.cache, solo.tokens
        )

    def _solo_step(self) -> list[GenerationBatch.Response]:
        """Feed `pending` + a draft; return the accepted draft tokens and the model's next one.

        `pending` was returned already; returned tokens are those the model has chosen, the
        last of them (the new `pending`) not yet in the KV cache.
        """
        solo = self._solo
        assert solo is not None
        room = solo.max_tokens - solo.num_tokens  # tokens still to return, at most
        draft = solo.drafter.draft(min(self.num_draft, room - 1))
        inputs = [solo.pending] + draft
        logits = self.model(mx.array([inputs]), cache=solo.cache)[0]
        targets = mx.argmax(logits, axis=-1).tolist() if solo.sampler is greedy_sampler else None
        chosen, n = solo.drafter.verify(solo.sampler, logits, targets, draft)
        if n < len(draft):
            for c in solo.cache:
                c.trim(len(draft) - n)
        solo.tokens += inputs[: n + 1]  # now in the cache
        stats = self.spec_stats
        stats.solo_steps += 1
        stats.drafted += len(draft)
        stats.accepted += n
        responses = []
        for i, token in enumerate(chosen[: n + 1]):
            row = row_logprobs(logits[i])
            if i == n:
                solo.pending, solo.pending_logprobs = token, row
            responses.append(self._respond(solo, token, row))
            if responses[-1].finish_reason is not None:
                extra = n - 1 - i  # drafts fed to the model after the finishing one
                if extra > 0:
                    for c in solo.cache:
                        c.trim(extra)
                    del solo.tokens[-extra:]
                break
        stats.emitted += len(responses)
        return responses
