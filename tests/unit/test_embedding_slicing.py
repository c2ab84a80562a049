"""The embedding batcher's pass planning (issue 23 item 6): bounded passes, newcomers that
can finish go first, a big request is never left out twice in a row."""

from __future__ import annotations

import asyncio

from app.engine.embedding.slicing import EmbedRequest, plan_pass


def _request(lengths: list[int]) -> EmbedRequest:
    loop = asyncio.new_event_loop()
    try:
        return EmbedRequest([[7] * n for n in lengths], loop.create_future(), loop)
    finally:
        loop.close()


def _drain(requests: list[EmbedRequest], rows: int, tokens: int) -> list[list[tuple[int, int]]]:
    """Plan passes until nothing is left: each pass as (request number, index) pairs."""
    passes = []
    while live := [r for r in requests if r.order]:
        items = plan_pass(live, rows, tokens)
        passes.append([(requests.index(r), i) for r, i in items])
    return passes


def test_every_pass_is_bounded_by_rows_and_padded_tokens() -> None:
    lengths = [3, 50, 7, 120, 9, 64, 64, 30, 2, 100] * 4
    big = _request(lengths)
    passes = _drain([big], rows=8, tokens=256)
    for items in passes:
        assert len(items) <= 8
        assert len(items) * max(lengths[i] for _, i in items) <= 256
    taken = sorted(i for items in passes for _, i in items)
    assert taken == list(range(len(lengths)))  # each sequence exactly once


def test_a_sequence_longer_than_the_budget_still_runs_alone() -> None:
    passes = _drain([_request([500, 10])], rows=8, tokens=100)
    assert passes == [[(0, 1)], [(0, 0)]]


def test_a_newcomer_that_can_finish_runs_alone_in_the_next_pass() -> None:
    big = _request([40] * 20)
    assert len(plan_pass([big], 32, 200)) == 5  # the big request's first slice
    small = _request([3])  # arrives while that slice runs
    assert plan_pass([big, small], 32, 200) == [(small, 0)]
    assert len(plan_pass([big], 32, 200)) == 5  # then the big request goes on


def test_a_big_request_is_never_left_out_twice_in_a_row() -> None:
    big = _request([40] * 20)
    served = []
    for _ in range(8):  # a new small request before every pass
        items = plan_pass([r for r in (big, _request([3])) if r.order], 32, 200)
        served.append(any(r is big for r, _ in items))
    assert all(a or b for a, b in zip(served, served[1:], strict=False)), served
    assert sum(served) >= 4


def test_two_big_requests_take_turns() -> None:
    first, second = _request([40] * 10), _request([40] * 12)
    passes = _drain([first, second], rows=32, tokens=200)
    owners = [{n for n, _ in items} for items in passes]
    assert owners[:4] == [{0}, {1}, {0}, {1}]
