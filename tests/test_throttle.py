"""ThrottleWork: never more than N in flight, lazy, and every failure returned with its item."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from corpus_manager.throttle import ThrottleWork


def test_never_more_than_limit_in_flight_and_items_pulled_lazily() -> None:
    pulled = 0
    running = 0
    peak = 0

    def items():  # type: ignore[no-untyped-def]
        nonlocal pulled
        for i in range(200):
            pulled += 1
            # lazy: never more than limit items taken beyond those finished
            assert pulled - done <= 5
            yield i

    done = 0

    async def work(i: int) -> int:
        nonlocal running, peak, done
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.001 * (i % 3))
        running -= 1
        done += 1
        return i * 2

    async def run() -> list[int]:
        tw = ThrottleWork(5)
        return [o.result async for o in tw.map(work, items())]  # type: ignore[misc]

    results = asyncio.run(run())
    assert sorted(results) == [i * 2 for i in range(200)]
    assert peak == 5


def test_every_failure_is_returned_with_its_item_and_others_finish() -> None:
    async def work(i: int) -> int:
        await asyncio.sleep(0)
        if i % 10 == 9:
            raise ValueError(f"bad {i}")
        return i

    async def run() -> tuple[list[int], dict[int, str]]:
        ok, bad = [], {}
        async for o in ThrottleWork(3).map(work, range(50)):
            if o.ok:
                ok.append(o.item)
            else:
                bad[o.item] = str(o.error)
        return ok, bad

    ok, bad = asyncio.run(run())
    assert bad == {i: f"bad {i}" for i in range(9, 50, 10)}
    assert sorted(ok) == [i for i in range(50) if i % 10 != 9]


def test_a_late_failure_does_not_drop_earlier_ones() -> None:
    async def work(i: int) -> int:
        await asyncio.sleep(0.01 if i == 0 else 0)
        raise RuntimeError(str(i))

    async def run() -> list[str]:
        return [str(o.error) async for o in ThrottleWork(4).map(work, range(8))]

    assert sorted(asyncio.run(run())) == [str(i) for i in range(8)]


def test_shared_limit_bounds_several_maps_together() -> None:
    tw = ThrottleWork(4)

    async def work(i: int) -> int:
        assert tw.in_flight <= 4
        await asyncio.sleep(0.002)
        return i

    async def consume(n: int) -> int:
        return len([o async for o in tw.map(work, range(n))])

    async def run() -> list[int]:
        return await asyncio.gather(consume(30), consume(30), consume(30))

    assert asyncio.run(run()) == [30, 30, 30]
    assert tw.peak == 4


def test_async_iterables_and_cancellation_release_slots() -> None:
    tw = ThrottleWork(2)

    async def items() -> AsyncIterator[int]:
        for i in range(100):
            yield i

    async def slow(i: int) -> int:
        await asyncio.sleep(10)
        return i

    async def run() -> None:
        agen = tw.map(slow, items())
        task = asyncio.ensure_future(agen.__anext__())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await agen.aclose()
        assert tw.in_flight == 0
        # every slot is free again: a full round of `limit` calls runs
        assert sorted([o.result async for o in tw.map(lambda i: asyncio.sleep(0, i), range(3))]) == [0, 1, 2]

    asyncio.run(run())


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ThrottleWork(0)
