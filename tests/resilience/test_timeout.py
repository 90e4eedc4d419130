from __future__ import annotations

import asyncio

import pytest

from scalekit.errors import ConfigurationError, DeadlineExceededError
from scalekit.resilience import Timeout, deadline, remaining
from scalekit.testing import ManualClock


async def test_timeout_raises_deadline_exceeded_which_is_a_timeout_error() -> None:
    async def hang() -> None:
        await asyncio.Event().wait()

    with pytest.raises(DeadlineExceededError) as info:
        await Timeout(0.01).call(hang)
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value.__cause__, TimeoutError)


async def test_fast_call_returns_its_value_and_clears_the_deadline() -> None:
    async def answer(x: int) -> int:
        assert remaining() is not None
        return x * 2

    assert await Timeout(5).call(answer, 21) == 42
    assert remaining() is None


async def test_nested_timeout_sees_the_remaining_outer_budget() -> None:
    clock = ManualClock()
    seen: list[float | None] = []

    async def inner() -> None:
        seen.append(remaining(clock))
        await clock.sleep(100)

    async def outer() -> None:
        await clock.sleep(3)
        await Timeout(60, clock=clock).call(inner)

    task = asyncio.create_task(Timeout(5, clock=clock).call(outer))
    while clock.sleepers < 2:  # the outer watcher and outer's sleep  # noqa: ASYNC110 - polls the clock's state
        await asyncio.sleep(0)
    await clock.advance(3)
    await clock.advance(1.5)
    assert seen == [2.0]
    assert not task.done()
    await clock.advance(0.5)
    with pytest.raises(DeadlineExceededError):
        await task


async def test_manual_clock_timeout_fires_only_when_advanced() -> None:
    clock = ManualClock()
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(Timeout(2, clock=clock).call(hang))
    await started.wait()
    while clock.sleepers < 1:  # noqa: ASYNC110 - polls the clock's state
        await asyncio.sleep(0)
    await clock.advance(1.9)
    assert not task.done()
    await clock.advance(0.1)
    with pytest.raises(DeadlineExceededError):
        await task


async def test_a_spent_deadline_does_not_start_the_call() -> None:
    clock = ManualClock()
    called = False

    async def later() -> None:
        nonlocal called
        called = True

    async def outer() -> None:
        clock.set(clock.monotonic() + 5)
        await Timeout(1, clock=clock).call(later)

    with pytest.raises(DeadlineExceededError, match="already passed"):
        await Timeout(5, clock=clock).call(outer)
    assert not called


async def test_a_timeout_error_from_the_call_itself_passes_through() -> None:
    async def own_timeout() -> None:
        raise TimeoutError("the driver's own timeout")

    with pytest.raises(TimeoutError, match="driver") as info:
        await Timeout(5).call(own_timeout)
    assert not isinstance(info.value, DeadlineExceededError)


async def test_cancellation_from_outside_passes_through() -> None:
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(Timeout(60).call(hang))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_deadline_context_manager_and_decorator() -> None:
    async with deadline(5):
        left = remaining()
        assert left is not None
        assert 4 < left <= 5

    @Timeout(0.01)
    async def slow() -> None:
        await asyncio.sleep(10)

    with pytest.raises(DeadlineExceededError):
        await slow()


@pytest.mark.parametrize("seconds", [0, -1, float("inf"), float("nan"), "1", True])
def test_bad_seconds_are_refused(seconds: object) -> None:
    with pytest.raises(ConfigurationError):
        Timeout(seconds)  # type: ignore[arg-type]
