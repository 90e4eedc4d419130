from __future__ import annotations

import asyncio

import pytest

from scalekit.errors import BulkheadFullError, ConfigurationError
from scalekit.resilience import Bulkhead, Fallback


async def test_bulkhead_limits_concurrency_and_rejects_when_queue_full() -> None:
    bulkhead = Bulkhead(2, max_queue=1, name="db")
    gate = asyncio.Event()
    running = 0
    peak = 0

    async def work() -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await gate.wait()
        running -= 1
        return "done"

    tasks = [asyncio.create_task(bulkhead.call(work)) for _ in range(3)]
    await asyncio.sleep(0)
    assert bulkhead.stats().active == 2
    assert bulkhead.stats().waiting == 1
    with pytest.raises(BulkheadFullError, match="'db' is full"):
        await bulkhead.call(work)
    gate.set()
    assert await asyncio.gather(*tasks) == ["done"] * 3
    assert peak == 2
    assert bulkhead.stats() == type(bulkhead.stats())(0, 0, 1)


async def test_bulkhead_max_wait_rejects_a_queued_call() -> None:
    bulkhead = Bulkhead(1, max_queue=5, max_wait=0.01)
    async with bulkhead.slot():
        with pytest.raises(BulkheadFullError, match="waited"):
            await bulkhead.call(asyncio.sleep, 0)
    assert bulkhead.stats().active == 0
    assert await bulkhead.call(asyncio.sleep, 0, "free") == "free"


async def test_cancelled_waiter_loses_no_slot() -> None:
    bulkhead = Bulkhead(1, max_queue=2)
    await bulkhead.acquire()
    waiter = asyncio.create_task(bulkhead.acquire())
    await asyncio.sleep(0)
    bulkhead.release()  # hands the slot to the waiter...
    waiter.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert bulkhead.stats().active == 0
    await asyncio.wait_for(bulkhead.acquire(), 1)
    bulkhead.release()


async def test_bulkhead_is_fifo() -> None:
    bulkhead = Bulkhead(1, max_queue=10)
    order: list[int] = []
    await bulkhead.acquire()

    async def take(i: int) -> None:
        async with bulkhead.slot():
            order.append(i)

    tasks = [asyncio.create_task(take(i)) for i in range(5)]
    await asyncio.sleep(0)
    bulkhead.release()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_concurrent": 0},
        {"max_concurrent": 1, "max_queue": -1},
        {"max_concurrent": 1, "max_wait": -1},
    ],
)
def test_bulkhead_bad_configuration(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        Bulkhead(**kwargs)  # type: ignore[arg-type]


async def test_fallback_value_for_chosen_exceptions_only() -> None:
    async def fail(exc: BaseException) -> list[str]:
        raise exc

    fallback: Fallback[list[str]] = Fallback([], on=ConnectionError)
    assert await fallback.call(fail, ConnectionError()) == []
    with pytest.raises(KeyError):
        await fallback.call(fail, KeyError())


async def test_fallback_handler_sync_and_async_gets_the_exception() -> None:
    async def fail() -> str:
        raise ValueError("boom")

    async def degraded(exc: BaseException) -> str:
        return f"cached ({exc})"

    assert await Fallback(handler=degraded).call(fail) == "cached (boom)"
    assert await Fallback(handler=lambda exc: type(exc).__name__).call(fail) == "ValueError"

    @Fallback("default")
    async def decorated() -> str:
        raise ValueError

    assert await decorated() == "default"


async def test_fallback_never_swallows_cancellation() -> None:
    fallback = Fallback("x", on=BaseException)

    async def cancelled() -> str:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await fallback.call(cancelled)


def test_fallback_needs_exactly_one_answer() -> None:
    with pytest.raises(ConfigurationError):
        Fallback()
    with pytest.raises(ConfigurationError):
        Fallback(1, handler=lambda e: 2)
    assert Fallback(None).value is None
