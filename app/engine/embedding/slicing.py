"""Which sequences go into the embedding batcher's next forward pass.

A pass is bounded twice: at most ``max_rows`` sequences, and at most ``max_tokens`` padded
tokens (rows × the longest row, what the model actually computes), so no single pass, and
therefore no wait behind one, grows with the size of a request.

:func:`plan_pass` fills a pass with the requests that can *finish* in it, smallest
remainder first; a request too large for that gets a slice of a pass only when the pass is
otherwise empty or when it was left out of the previous one. So a one-word request that
arrives while a 128-document request is being served runs on its own in the very next pass
(its wait is the rest of one slice, not the big request's next slice as well), while the big
request is never left out twice in a row: under a stream of small requests it still gets
every other pass, and two big requests alternate.

A request's sequences are taken shortest first (similar lengths pad less). A slice that
starts a pass is cut the same way whatever else is queued, so small requests served between
a big request's slices do not change its vectors at all; elsewhere a sequence's pass only
changes its padding (float rounding).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any


class EmbedRequest:
    """One embedding request as the worker thread tracks it, pass after pass."""

    __slots__ = ("token_ids", "future", "loop", "results", "remaining", "error", "order",
                 "left_out")

    def __init__(self, token_ids: list[list[int]], future: asyncio.Future[Any],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.token_ids = token_ids
        self.future = future
        self.loop = loop
        self.results: list[list[float] | None] = [None] * len(token_ids)
        self.remaining = len(token_ids)  # sequences without a vector yet
        self.error: BaseException | None = None
        # sequence indices not yet in a pass, shortest first
        self.order = deque(sorted(range(len(token_ids)), key=lambda i: len(token_ids[i])))
        self.left_out = False  # had sequences to run but got none of the last pass


def _fitting(lengths: Sequence[int], rows: int, longest: int, max_rows: int,
             max_tokens: int) -> int:
    """How many of ``lengths`` (ascending) fit into a pass of ``rows`` rows padded to
    ``longest``."""
    count = 0
    for length in lengths:
        longest = max(longest, length)
        if rows + count + 1 > max_rows or (rows + count + 1) * longest > max_tokens:
            break
        count += 1
    return count


def plan_pass(live: Sequence[EmbedRequest], max_rows: int,
              max_tokens: int) -> list[tuple[EmbedRequest, int]]:
    """The next pass's ``(request, sequence index)`` items, taken off the requests' orders.

    ``live`` are the requests with sequences left, in arrival order; see the module
    docstring for the rule. A pass always has at least one sequence when ``live`` is
    non-empty (a sequence longer than ``max_tokens`` runs alone).
    """
    # left out last time first (oldest first), then the smallest remainder first
    ordered = sorted(live, key=lambda r: (not r.left_out, 0 if r.left_out else len(r.order)))
    items: list[tuple[EmbedRequest, int]] = []
    longest = 0
    for req in ordered:
        lengths = [len(req.token_ids[i]) for i in req.order]
        count = _fitting(lengths, len(items), longest, max_rows, max_tokens)
        if count < len(lengths) and items and not req.left_out:
            count = 0  # does not finish here and may wait: this pass is for those that do
        elif not items:
            count = max(count, 1)
        for _ in range(count):
            index = req.order.popleft()
            longest = max(longest, len(req.token_ids[index]))
            items.append((req, index))
        req.left_out = count == 0
    return items
