"""Prompt-lookup speculative decoding for a running batch of two or more sequences.

The solo path (:mod:`app.engine.lm.speculative`) covers one sequence. With several, each decode
step of mlx-lm's ``GenerationBatch`` feeds one token per row; here a step feeds each row its
pending token plus up to ``K`` draft tokens (prompt lookup, :mod:`app.engine.lm.drafting`) in
one ``(B, 1 + K)`` forward pass, and every row keeps the prefix of its draft that the model
agrees with plus the model's own next token. On the CPU a ``(16, 3)`` pass costs ~1.6x a
``(16, 1)`` one, so rows that copy from their context (RAG answers, quoted code, rewrites)
return several tokens per step.

Rows stay right-aligned in the ``BatchKVCache`` (every batch-cache operation assumes it), so
a row's rejected draft entries cannot simply be cut off as a single sequence's would. They
stay where they are as *holes*: :class:`HoleyBatchKVCache` masks them out of attention for
good and moves the row's ``offset`` (its next RoPE position) back, so positions and attention
are exactly those of the row without the rejected tokens; ``extract`` returns a row without
its holes. Holes cost memory and attention work, so ``K`` is chosen such that at least a quarter
of the ``B x K`` draft slots hold real drafts, and the caches are compacted when more than
half of their entries are holes.

A batch runs this path only when no row has logits processors (penalties, bias, grammars:
their token context would need the rejected tokens undone) and all caches are plain batch
caches; otherwise, or when no row has a draft, the stock step runs. Outputs: greedy rows
take the argmax at each position, sampled rows draw with their own sampler position by
position until a draw differs from the draft (:func:`app.engine.lm.drafting.sample_until_mismatch`),
so texts are those of non-speculative decoding up to floating-point ties.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import mlx.core as mx
from mlx_lm.generate import GenerationBatch, _merge_caches
from mlx_lm.models.cache import BatchKVCache, KVCache

from app.engine.lm.drafting import Drafter, row_logprobs
from app.engine.lm.eager_tokens import EagerTokenBatch
from app.engine.lm.spec_gate import SpeculationGate

if TYPE_CHECKING:
    from app.engine.lm.speculative import SpeculativeBatchGenerator

DRAFT_BUDGET = 40  # draft tokens per step over the whole batch: K <= DRAFT_BUDGET // B


class HoleyBatchKVCache(BatchKVCache):
    """A ``BatchKVCache`` whose rows may hold rejected draft entries, masked out for good."""

    holes: mx.array | None  # (B, _idx) bool: True where an entry must be ignored

    @classmethod
    def adopt(cls, cache: BatchKVCache) -> HoleyBatchKVCache:
        """Turn a plain batch cache into one (in place; nothing is copied)."""
        if type(cache) is BatchKVCache:
            cache.__class__ = cls
            cache.holes = None
        return cache  # type: ignore[return-value]

    def _grow_holes(self, n: int) -> mx.array:
        assert self.holes is not None
        return mx.concatenate([self.holes, mx.zeros((self.holes.shape[0], n), mx.bool_)], 1)

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> Any:
        out = super().update_and_fetch(keys, values)
        if self.holes is not None:
            self.holes = self._grow_holes(keys.shape[2])
        return out

    def make_mask(self, N: int, return_array: bool = False, **kwargs: Any) -> Any:
        mask = super().make_mask(N, return_array=return_array, **kwargs)
        if self.holes is None:
            return mask
        return mask & ~self._grow_holes(N)[:, None, None, :]

    def reject(self, counts: list[int]) -> None:
        """Mark the last ``counts[b]`` entries of each row ``b`` as holes."""
        if not any(counts):
            return
        if self.holes is None:
            self.holes = mx.zeros((len(counts), self._idx), mx.bool_)
        rejected = mx.array(counts)
        self.holes = self.holes | (mx.arange(self._idx)[None] >= self._idx - rejected[:, None])
        self.offset = self.offset - rejected

    def hole_fraction(self) -> float:
        if self.holes is None or self._idx == 0:
            return 0.0
        return self.holes.sum().item() / self.holes.size

    def trim(self, n: int) -> int:
        n = super().trim(n)
        if self.holes is not None:
            self.holes = self.holes[:, : self._idx]
        return n

    def filter(self, batch_indices: Any) -> None:
        before = self._idx
        super().filter(batch_indices)
        if self.holes is not None:
            self.holes = self.holes[mx.array(batch_indices)][:, before - self._idx :]

    def extend(self, other: BatchKVCache) -> None:
        mine, theirs = self.holes, getattr(other, "holes", None)
        rows = (self.offset.shape[0], other.offset.shape[0])
        lengths = (self._idx, other._idx)
        super().extend(other)
        if mine is None and theirs is None:
            return
        parts = []
        for holes, n, length in zip((mine, theirs), rows, lengths, strict=True):
            holes = mx.zeros((n, length), mx.bool_) if holes is None else holes
            parts.append(mx.pad(holes, [(0, 0), (self._idx - length, 0)]))  # left: padding
        self.holes = mx.concatenate(parts)

    def extract(self, idx: int) -> KVCache:
        if self.holes is None:
            return super().extract(idx)
        start = self.left_padding.tolist()[idx]
        keep = [p for p, hole in enumerate(self.holes[idx].tolist()) if p >= start and not hole]
        cache = KVCache()
        where = mx.array(keep, dtype=mx.int32)
        cache.keys = mx.contiguous(mx.take(self.keys[idx : idx + 1], where, axis=2))
        cache.values = mx.contiguous(mx.take(self.values[idx : idx + 1], where, axis=2))
        cache.offset = len(keep)
        return cache


def draft_width(lengths: list[int], cap: int) -> int:
    """The widest K <= cap whose B x K draft slots are at least a quarter filled (0: none).

    Every row pays for K extra positions (and keeps the unused ones as holes), so a lone
    drafting row in a wide batch must not set K for all."""
    for k in range(min(cap, max(lengths, default=0)), 0, -1):
        if 4 * sum(min(n, k) for n in lengths) >= k * len(lengths):
            return k
    return 0


class BatchSpeculation:
    """Speculative steps for the generator's ``GenerationBatch``; see the module docstring."""

    def __init__(self, generator: SpeculativeBatchGenerator) -> None:
        self.generator = generator
        self.drafters: dict[int, Drafter] = {}
        self.gates: dict[int, SpeculationGate] = {}  # by batch size (powers of two)

    def _eligible(self, batch: GenerationBatch) -> bool:
        if self.generator.num_draft <= 0 or len(batch) < 2 or batch._next_tokens is None:
            return False
        if self.generator.prompts_waiting():
            return False  # plain steps, so the waiting prompts' prefill comes sooner
        if 0 in batch._num_tokens:
            return False  # a row's first token is ready: a plain step returns it at once
        if batch.logits_processors and any(batch.logits_processors):
            return False
        return all(type(c) in (BatchKVCache, HoleyBatchKVCache) for c in batch.prompt_cache)

    def _drafter(self, batch: GenerationBatch, i: int, pending: int) -> Drafter:
        """Row ``i``'s drafter, its lookup brought up to the cache's tokens + ``pending``."""
        uid = batch.uids[i]
        context = batch.tokens[i] + [pending]
        drafter = self.drafters.get(uid)
        if drafter is None:
            sampler = (batch.samplers[i] if batch.samplers else None) or batch.fallback_sampler
            drafter = self.drafters[uid] = self.generator.new_drafter(context, sampler)
        else:
            drafter.lookup.extend(context[len(drafter.lookup.tokens) :])
        return drafter

    def step(self, batch: GenerationBatch) -> list[GenerationBatch.Response] | None:
        """One speculative step of ``batch``, or None when the stock step should run."""
        if not self._eligible(batch):
            return None
        live = set(batch.uids)
        for uid in [u for u in self.drafters if u not in live]:
            del self.drafters[uid]
        pending = batch._next_tokens.tolist()
        allow = self.generator.allow
        cap = min(self.generator.num_draft, max(1, DRAFT_BUDGET // len(batch)))
        drafts = []
        for i, uid in enumerate(batch.uids):
            drafter = self._drafter(batch, i, pending[i])
            room = batch.max_tokens[i] - batch._num_tokens[i] - 1  # after `pending`
            ok = allow is None or allow(uid)
            drafts.append(drafter.draft(min(cap, room)) if ok else [])
        k = draft_width([len(d) for d in drafts], cap)
        if k == 0:
            return None
        drafts = [d[:k] for d in drafts]
        self._compact(batch)
        caches = [HoleyBatchKVCache.adopt(c) for c in batch.prompt_cache]
        rows = [[p] + d + [p] * (k - len(d)) for p, d in zip(pending, drafts, strict=True)]
        logits = batch.model(mx.array(rows), cache=caches)
        targets = mx.argmax(logits, axis=-1)
        mx.eval(targets)
        return self._respond(batch, caches, logits, targets.tolist(), pending, drafts, k)

    def _compact(self, batch: GenerationBatch) -> None:
        """Rebuild the caches without holes once more than half their entries are holes."""
        first = batch.prompt_cache[0]
        if not isinstance(first, HoleyBatchKVCache) or first.hole_fraction() <= 0.5:
            return
        rows = [[c.extract(i) for c in batch.prompt_cache] for i in range(len(batch))]
        batch.prompt_cache = _merge_caches(rows)
        mx.eval([c.state for c in batch.prompt_cache])

    def _respond(
        self, batch: GenerationBatch, caches: list[HoleyBatchKVCache], logits: mx.array,
        targets: list[list[int]], pending: list[int], drafts: list[list[int]], k: int,
    ) -> list[GenerationBatch.Response]:
        stats = self.generator.spec_stats
        rejected, next_tokens, next_logprobs = [], [], []
        emitted_rows, logprob_rows = [], []
        for i, draft in enumerate(drafts):
            sampler = (batch.samplers[i] if batch.samplers else None) or batch.fallback_sampler
            drafter = self.drafters[batch.uids[i]]
            chosen, n = drafter.verify(sampler, logits[i], targets[i], draft)
            rejected.append(k - n)
            emitted_rows.append([pending[i]] + draft[:n])
            logprob_rows.append([batch._next_logprobs[i]]
                                + [row_logprobs(logits[i, j]) for j in range(n)])
            next_tokens.append(chosen[n])
            next_logprobs.append(row_logprobs(logits[i, n]))
            if draft:
                stats.batch_drafts += 1
                stats.drafted += len(draft)
                stats.accepted += n
                stats.emitted += n + 1
        for cache in caches:
            cache.reject(rejected)
        batch._current_tokens = batch._next_tokens
        batch._current_logprobs = batch._next_logprobs
        batch._next_tokens = mx.array(next_tokens)
        batch._next_logprobs = next_logprobs
        return self._finish(batch, emitted_rows, logprob_rows)

    def _finish(
        self, batch: GenerationBatch, emitted_rows: list[list[int]],
        logprob_rows: list[list[mx.array]],
    ) -> list[GenerationBatch.Response]:
        """Responses in order, row by row; rows that end leave the batch (as ``next()``)."""
        responses, keep = [], []
        for i, (emitted, logprobs) in enumerate(zip(emitted_rows, logprob_rows, strict=True)):
            batch.tokens[i] += emitted  # all of them are in the cache now
            ended = False
            for j, (token, row) in enumerate(zip(emitted, logprobs, strict=True)):
                batch._num_tokens[i] += 1
                reason = "length" if batch._num_tokens[i] >= batch.max_tokens[i] else None
                if batch._matchers[i].advance(token):
                    reason = "stop"
                if reason is None:
                    responses.append(GenerationBatch.Response(
                        batch.uids[i], token, row, None, None, None))
                    continue
                extra = len(emitted) - 1 - j  # fed to the model after the ending token
                cache = batch.extract_cache(i)
                if extra:
                    for c in cache:
                        c.trim(extra)
                    del batch.tokens[i][-extra:]
                responses.append(GenerationBatch.Response(
                    batch.uids[i], token, row, reason, cache, batch.tokens[i]))
                ended = True
                break
            if not ended:
                keep.append(i)
        if len(keep) < len(batch.uids):
            batch.filter(keep)
        return responses


class SpeculativeGenerationBatch(EagerTokenBatch):
    """``GenerationBatch`` whose ``next()`` tries a speculative step first, when the gate
    (:mod:`app.engine.lm.spec_gate`) says passes are paying for themselves."""

    speculation: BatchSpeculation | None = None

    def next(self) -> list[GenerationBatch.Response]:
        speculation = self.speculation
        if speculation is None or not self.uids:
            return super().next()
        gate = speculation.gates.setdefault(len(self.uids).bit_length(), SpeculationGate())
        started = time.perf_counter()
        if len(self.uids) > 1 and gate.speculate():
            responses = speculation.step(self)
            if responses is not None:
                gate.record(True, len(responses), time.perf_counter() - started)
                return responses
            started = time.perf_counter()
        responses = super().next()
        gate.record(False, len(responses), time.perf_counter() - started)
        return responses
