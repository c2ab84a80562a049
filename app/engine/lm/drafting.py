"""Drafting for speculative decoding: prompt lookup, pacing, and the acceptance rules.

Shared by the solo path (:mod:`app.engine.lm.speculative`) and the batched path
(:mod:`app.engine.lm.batch_speculation`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlx.core as mx
from mlx_lm.sample_utils import greedy_sampler


class PromptLookup:
    """Incremental n-gram index over a token context; proposes continuations of its suffix.

    Besides the n-gram index it follows a *copy pointer*: the context position whose token
    is expected next while the text copies an earlier passage (a RAG answer quoting its
    source). A token that matches advances it; one that does not is taken as a substitution
    or skip when it appears within ``RESYNC`` tokens ahead (the pointer jumps past it), else
    as an insertion (the pointer stays: ", they" inserted into a quote goes on with the
    quote); after ``MAX_STRAY`` such tokens in a row the pointer is dropped. Drafts come from
    the pointer while the last token matched it, else from the longest suffix n-gram
    (the occurrence nearest after the pointer, else the latest), else from the pointer.
    """

    RESYNC = 3
    MAX_STRAY = 2

    def __init__(self, tokens: list[int], ngram_max: int = 3, ngram_min: int = 2) -> None:
        if not 1 <= ngram_min <= ngram_max:
            raise ValueError("need 1 <= ngram_min <= ngram_max")
        self.ngram_min, self.ngram_max = ngram_min, ngram_max
        self.tokens: list[int] = []
        # n -> {n-gram: end indices (ascending) of its occurrences that have a next token}
        self._index: dict[int, dict[tuple[int, ...], list[int]]] = {
            n: {} for n in range(ngram_min, ngram_max + 1)
        }
        self.pointer: int | None = None  # index of the token expected next, when copying
        self._aligned = False  # the last token was the one the pointer expected
        self._stray = 0  # tokens in a row that did not match the pointer
        self.extend(tokens)

    def extend(self, tokens: list[int]) -> None:
        for token in tokens:
            self._follow(token)
            end = len(self.tokens)  # tokens[end - n:end] is followed by `token`
            self.tokens.append(token)
            for n, index in self._index.items():
                if end >= n:
                    index.setdefault(tuple(self.tokens[end - n : end]), []).append(end)

    def _follow(self, token: int) -> None:
        """Move the copy pointer for a newly appended ``token``."""
        ptr = self.pointer
        self._aligned = False
        if ptr is None:
            return
        ahead = self.tokens[ptr : ptr + self.RESYNC + 1]
        if token in ahead:
            self.pointer = ptr + ahead.index(token) + 1
            self._aligned, self._stray = True, 0
            return
        self._stray += 1
        if self._stray > self.MAX_STRAY:
            self.pointer, self._stray = None, 0

    def _match(self) -> int | None:
        """Where the longest suffix n-gram continues: nearest at/after the pointer, or latest."""
        size = len(self.tokens)
        for n in range(self.ngram_max, self.ngram_min - 1, -1):
            if size < n:
                continue
            ends = self._index[n].get(tuple(self.tokens[size - n :]))
            if not ends:
                continue
            if self.pointer is not None:
                after = [e for e in ends if e >= self.pointer]
                if after:
                    return after[0]
            return ends[-1]
        return None

    def propose(self, k: int) -> list[int]:
        """Up to ``k`` tokens that should follow the context, by the rules above."""
        if k <= 0:
            return []
        start = self.pointer if self._aligned else self._match()
        if start is None:
            start = self.pointer
        if start is None or start >= len(self.tokens):
            return []
        self.pointer = start
        return self.tokens[start : start + k]


def accepted_prefix(draft: list[int], targets: list[int]) -> int:
    """How many draft tokens match the verifier's choices (``targets[i]`` follows ``draft[:i]``)."""
    n = 0
    while n < len(draft) and draft[n] == targets[n]:
        n += 1
    return n


@dataclass
class SpeculativeStats:
    solo_steps: int = 0  # verification forward passes of the solo path
    batch_drafts: int = 0  # rows of batched verification passes that carried a draft
    drafted: int = 0  # draft tokens proposed and verified
    accepted: int = 0  # draft tokens accepted
    emitted: int = 0  # tokens returned by verifications (accepted drafts + the model's own)
    solo_entries: int = 0  # sequences moved from the batch into the solo path
    solo_exits: int = 0  # moved back into the batch because other work arrived

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def drafts(self) -> int:
        """Verifications: solo passes plus drafting rows of batched passes."""
        return self.solo_steps + self.batch_drafts

    @property
    def tokens_per_step(self) -> float:
        return self.emitted / self.drafts if self.drafts else 0.0


MISS_STREAK, MISS_PAUSE, MAX_PAUSE = 3, 4, 32


@dataclass(eq=False)
class Drafter:
    """One sequence's drafting: prompt lookup plus pacing.

    After MISS_STREAK drafts in a row are wholly rejected, drafting pauses for 4, 8, ... 32
    steps (verifying costs, and free-form text can make drafts useless for a while). A sampled
    sequence's drafts start at 2 tokens and double while wholly accepted (a draft token
    survives with probability p(token) only).
    """

    lookup: PromptLookup
    sampled: bool = False
    misses: int = 0  # drafts in a row with nothing accepted
    pause: int = 0  # steps left without drafting
    backoff: int = MISS_PAUSE
    ramp: int | None = None  # sampled sequences: current draft length (grows while accepted)

    def __post_init__(self) -> None:
        if self.sampled:
            self.ramp = 2

    def draft(self, k: int) -> list[int]:
        if k <= 0:
            return []
        if self.pause > 0:
            self.pause -= 1
            return []
        return self.lookup.propose(k if self.ramp is None else min(k, self.ramp))

    def verify(self, sampler: Any, logits: mx.array, targets: list[int] | None,
               draft: list[int]) -> tuple[list[int], int]:
        """The model's choices after ``[pending] + draft`` and how many draft tokens it
        accepted; updates pacing and the lookup (which then ends with the new pending token).

        ``logits``: one row per fed position; ``targets``: their argmaxes (used for greedy
        samplers, computed by the caller, batched where it can). Other samplers draw with
        :func:`sample_until_mismatch`.
        """
        if sampler is greedy_sampler:
            assert targets is not None
            chosen = targets
        else:
            chosen = sample_until_mismatch(sampler, row_logprobs(logits), draft)
        n = accepted_prefix(draft, chosen)
        self.verified(len(draft), n)
        self.lookup.extend(chosen[: n + 1])
        return chosen, n

    def verified(self, drafted: int, accepted: int) -> None:
        if not drafted:
            return
        if self.ramp is not None:
            self.ramp = min(2 * self.ramp, 64) if accepted == drafted else (
                self.ramp if accepted else 2)
        if accepted:
            self.misses, self.backoff = 0, MISS_PAUSE
            return
        self.misses += 1
        if self.misses >= MISS_STREAK:
            self.misses, self.pause = 0, self.backoff
            self.backoff = min(MAX_PAUSE, 2 * self.backoff)


def row_logprobs(logits: mx.array) -> mx.array:
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


def sample_until_mismatch(sampler: Any, logprobs: mx.array, draft: list[int]) -> list[int]:
    """Sample position after position with the sequence's own sampler; stop at the first
    sample that differs from the draft.

    Every returned token is a draw from the model's distribution given exactly the tokens
    before it, so the output distribution is the non-speculative one (for a one-token
    draft per position this is the standard speculative-sampling rule: the draft survives
    with probability p(draft), otherwise the token is drawn from p without it). The sampler
    is called once per token returned, in order, as the batch path calls it, so a sampler
    with its own seeded key yields the same text with and without speculation.
    """
    chosen: list[int] = []
    for i in range(len(draft) + 1):
        chosen.append(int(sampler(logprobs[i : i + 1]).item()))
        if i == len(draft) or chosen[i] != draft[i]:
            break
    return chosen
