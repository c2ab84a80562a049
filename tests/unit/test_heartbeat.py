"""with_heartbeat: beats while the wrapped stream is silent, nothing lost, nothing left running."""

from __future__ import annotations

import asyncio

from app.handler.heartbeat import BEAT, with_heartbeat


async def _slow(log: list[str]):
    try:
        yield 1
        await asyncio.sleep(0.3)
        yield 2
        await asyncio.sleep(10)
        yield 3
    finally:
        log.append("closed")


def test_beats_fill_silences_and_items_keep_their_order():
    async def main():
        out = []
        async for item in with_heartbeat(_slow([]), 0.05):
            out.append(item)
            if item == 2:
                break
        return out

    out = asyncio.run(main())
    assert out[0] == 1 and out[-1] == 2
    assert 3 <= out.count(BEAT) <= 7 and len(out) == out.count(BEAT) + 2


def test_leaving_early_stops_the_wrapped_stream():
    log: list[str] = []

    async def main():
        stream = with_heartbeat(_slow(log), 0.05)
        async for item in stream:
            if item == 2:
                break
        await stream.aclose()
        await asyncio.sleep(0.05)

    asyncio.run(main())
    assert log == ["closed"]
