"""The per-store watchdog that bounds every backend call (instead of ``asyncio.timeout``)."""

from __future__ import annotations

import asyncio

import pytest

from scalekit.errors import ConfigurationError, SessionStoreUnavailableError
from scalekit.sessions import MemorySessionBackend, SessionStore
from scalekit.sessions._deadline import Watchdog
from scalekit.sessions.backend import Limits, StoredSession


async def test_a_call_that_answers_returns_its_result() -> None:
    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    assert await Watchdog(1.0).run(answer()) == 42


async def test_a_hung_call_raises_timeout_and_leaves_the_task_usable() -> None:
    watchdog = Watchdog(0.05)
    hung = asyncio.Event()
    with pytest.raises(TimeoutError, match=r"within 0\.05s"):
        await asyncio.wait_for(watchdog.run(hung.wait()), timeout=10)
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0
    assert await watchdog.run(asyncio.sleep(0, result="after")) == "after"


async def test_a_call_that_swallows_cancellation_is_cancelled_again() -> None:
    watchdog = Watchdog(0.05)
    swallowed = 0

    async def stubborn() -> str:
        nonlocal swallowed
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            swallowed += 1
        await asyncio.Event().wait()  # hangs again: the watchdog must not give up
        return "never"

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(watchdog.run(stubborn()), timeout=10)
    assert swallowed == 1


async def test_the_callers_own_cancellation_is_not_turned_into_a_timeout() -> None:
    watchdog = Watchdog(10.0)
    started = asyncio.Event()

    async def call() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(watchdog.run(call()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_nested_call_keeps_the_outer_deadline() -> None:
    watchdog = Watchdog(0.05)

    async def outer() -> None:
        await watchdog.run(asyncio.Event().wait())  # nested: no second deadline

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(watchdog.run(outer()), timeout=10)


def test_one_watchdog_serves_successive_event_loops() -> None:
    watchdog = Watchdog(0.05)

    async def hang() -> None:
        await watchdog.run(asyncio.Event().wait())

    for _ in range(2):  # the timer of a closed loop must not be trusted by the next one
        with pytest.raises(TimeoutError):
            asyncio.run(asyncio.wait_for(hang(), timeout=10))


async def test_the_store_timeout_can_be_changed_after_construction() -> None:
    store = SessionStore(MemorySessionBackend(), secret_key="k" * 32, timeout=5.0)
    assert store.timeout == 5.0
    store.timeout = 0.05

    async def hang(key: str, limits: Limits) -> StoredSession | None:
        await asyncio.Event().wait()
        return None

    store.backend.load = hang  # type: ignore[method-assign]
    with pytest.raises(SessionStoreUnavailableError, match=r"within 0\.05s"):
        await asyncio.wait_for(store.load(store._keys.new_id()), timeout=10)
    with pytest.raises(ConfigurationError):
        store.timeout = 0
