"""ManualClock: time moves only when the test says so."""

from __future__ import annotations

import asyncio

import pytest

from scalekit.clock import SYSTEM_CLOCK, Clock
from scalekit.testing import ManualClock


def test_both_clocks_satisfy_the_protocol() -> None:
    assert isinstance(ManualClock(), Clock)
    assert isinstance(SYSTEM_CLOCK, Clock)


async def test_sleep_wakes_only_when_advanced_far_enough() -> None:
    clock = ManualClock()
    task = asyncio.create_task(clock.sleep(10))
    await asyncio.sleep(0)
    assert clock.sleepers == 1
    await clock.advance(9.999)
    assert not task.done()
    await clock.advance(0.001)
    assert task.done()
    assert clock.monotonic() == pytest.approx(10.0)


async def test_sleepers_wake_in_time_order_and_see_their_own_time() -> None:
    clock = ManualClock()
    seen: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        seen.append((name, clock.monotonic()))

    tasks = [asyncio.create_task(sleeper(n, s)) for n, s in [("b", 2), ("a", 1), ("c", 3)]]
    await asyncio.sleep(0)
    await clock.advance(5)
    await asyncio.gather(*tasks)
    assert seen == [("a", 1.0), ("b", 2.0), ("c", 3.0)]
    assert clock.monotonic() == 5.0


async def test_chained_sleeps_inside_one_advance() -> None:
    clock = ManualClock()
    ticks: list[float] = []

    async def ticker() -> None:
        for _ in range(3):
            await clock.sleep(1)
            ticks.append(clock.monotonic())

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    await clock.advance(3)
    await task
    assert ticks == [1.0, 2.0, 3.0]


async def test_wall_time_moves_with_monotonic() -> None:
    clock = ManualClock(wall_start=1000.0)
    await clock.advance(5)
    assert clock.time() == 1005.0


async def test_cannot_go_backwards() -> None:
    with pytest.raises(ValueError, match="backwards"):
        await ManualClock().advance(-1)


async def test_cancelled_sleepers_are_not_counted() -> None:
    clock = ManualClock()
    task = asyncio.create_task(clock.sleep(5))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clock.sleepers == 0
    await clock.advance(10)  # waking a cancelled sleeper is harmless
