"""Which waiting sequences join the running batch: fair across requests and clients.

First come, first served let one request's sequences (16 prompts × ``n`` 8) fill every batch
slot and the queue ahead of everyone else, so a one-line chat waited for thousands of their
tokens. :class:`AdmissionPolicy` instead

- takes sequences round-robin: the next slot goes to the client with the fewest running
  sequences, then to the request with the fewest, then to the one that came first;
- lets one request hold at most ``per_request`` slots;
- keeps ``reserved`` free slots for requests (and clients) that have nothing running, so a
  newcomer's first sequence starts as soon as a slot is free rather than after the big
  request's next sequence.

The engine admits only as many sequences as its next prefill pass takes (``at_most``): the
generator prefills in insertion order, so sequences admitted early would otherwise keep a
newcomer's prompt waiting behind theirs.

A sequence's request is its ``group`` (one per API request) and its client its ``client``
(the caller's API key and X-House-ID, ``RequestContext.client()``; requests with neither
are each their own client). Running
sequences are never preempted.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass

from app.engine.lm.types import GenerationRequest


def client_of(request: GenerationRequest) -> str:
    """The fairness unit above the request: its client, or the request itself."""
    return request.client or f"request:{request.group}"


@dataclass(frozen=True)
class AdmissionPolicy:
    """Limits on who gets the batch's free slots (see the module docstring)."""

    max_batch_size: int
    per_request: int
    reserved: int

    @classmethod
    def for_batch(
        cls, max_batch_size: int, per_request: int | None = None, reserved: int | None = None
    ) -> AdmissionPolicy:
        """Defaults: a request holds at most half the batch; an eighth stays for newcomers."""
        if per_request is None:
            per_request = max(1, max_batch_size // 2)
        if reserved is None:
            reserved = max_batch_size // 8
        return cls(max_batch_size, per_request, min(reserved, max_batch_size - 1))

    def select(
        self,
        waiting: Iterable[GenerationRequest],
        running: Iterable[GenerationRequest],
        at_most: int | None = None,
    ) -> list[GenerationRequest]:
        """The waiting sequences to admit now (at most ``at_most``), in admission order."""
        by_request: Counter[int] = Counter()
        by_client: Counter[str] = Counter()
        held = 0
        for request in running:
            by_request[request.group] += 1
            by_client[client_of(request)] += 1
            held += 1
        free = self.max_batch_size - held
        queues: dict[int, deque[GenerationRequest]] = {}
        for request in waiting:
            queues.setdefault(request.group, deque()).append(request)
        arrival = {group: i for i, group in enumerate(queues)}
        taken: list[GenerationRequest] = []
        limit = free if at_most is None else min(free, at_most)
        while len(taken) < limit and queues:
            group = min(queues, key=lambda g: (by_client[client_of(queues[g][0])],
                                               by_request[g], arrival[g]))
            client = client_of(queues[group][0])
            newcomer = by_request[group] == 0 and by_client[client] == 0
            if by_request[group] >= self.per_request or (not newcomer and free <= self.reserved):
                del queues[group]  # no more slots for this request in this round
                continue
            taken.append(queues[group].popleft())
            if not queues[group]:
                del queues[group]
            by_request[group] += 1
            by_client[client] += 1
            free -= 1
        return taken
