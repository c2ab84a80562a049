"""Fair admission (issue 23 item 2): who gets the batch's free slots."""

from __future__ import annotations

import asyncio

from app.engine.lm.admission import AdmissionPolicy
from app.engine.lm.types import GenerationRequest, SamplingParams

PARAMS = SamplingParams(max_tokens=4)


def _requests(loop: asyncio.AbstractEventLoop, group: int, count: int,
              client: str = "") -> list[GenerationRequest]:
    return [GenerationRequest([1, 2], PARAMS, loop, group=group, client=client)
            for _ in range(count)]


def test_a_big_request_leaves_slots_for_a_newcomer() -> None:
    loop = asyncio.new_event_loop()
    try:
        policy = AdmissionPolicy.for_batch(8)  # at most 4 per request, 1 slot reserved
        big_a, big_b = _requests(loop, 1, 16), _requests(loop, 2, 16)
        running = policy.select(big_a + big_b, [])
        assert [r.group for r in running].count(1) == 4  # the per-request cap
        assert len(running) == 7  # the last slot is reserved for newcomers
        small = _requests(loop, 3, 1)
        rest = [r for r in big_a + big_b if r not in running]
        assert policy.select(rest + small, running) == small  # queued last, admitted first
    finally:
        loop.close()


def test_slots_alternate_between_requests_and_clients() -> None:
    loop = asyncio.new_event_loop()
    try:
        policy = AdmissionPolicy(max_batch_size=6, per_request=6, reserved=0)
        first = _requests(loop, 1, 6, client="house-a")
        second = _requests(loop, 2, 6, client="house-a")
        third = _requests(loop, 3, 6, client="house-b")
        taken = policy.select(first + second + third, [])
        clients = [r.client for r in taken]
        assert clients.count("house-a") == clients.count("house-b") == 3  # per client first
        assert {r.group for r in taken if r.client == "house-a"} == {1, 2}
    finally:
        loop.close()


def test_a_lone_request_may_use_the_batch_up_to_its_cap() -> None:
    loop = asyncio.new_event_loop()
    try:
        policy = AdmissionPolicy.for_batch(4)  # small batches reserve nothing
        assert policy.reserved == 0
        assert len(policy.select(_requests(loop, 1, 10), [])) == 2
        assert len(AdmissionPolicy.for_batch(4, per_request=4).select(
            _requests(loop, 1, 10), [])) == 4
    finally:
        loop.close()


def test_admission_takes_no_more_than_the_next_prefill_pass() -> None:
    loop = asyncio.new_event_loop()
    try:
        policy = AdmissionPolicy.for_batch(32)
        big = _requests(loop, 1, 32)
        first = policy.select(big, [], at_most=8)
        assert first == big[:8]
        small = _requests(loop, 2, 1)
        assert policy.select(big[8:] + small, first, at_most=1) == small
    finally:
        loop.close()
