"""Shared breaker state, in memory (no server): the rules every store follows."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from scalekit.errors import CircuitOpenError, ConfigurationError
from scalekit.resilience import BreakerState, CircuitBreaker, CountWindow, InMemoryBreakerStore
from scalekit.testing import ManualClock
from tests.resilience.calls import Boom, fail, ok


def pair(clock: ManualClock, store: Any, **kw: Any) -> tuple[CircuitBreaker, CircuitBreaker]:
    kw = {
        "window": CountWindow(10),
        "minimum_calls": 3,
        "open_duration": 10.0,
        "half_open_max_calls": 2,
        "clock": clock,
        "store": store,
        **kw,
    }
    return CircuitBreaker("shared", **kw), CircuitBreaker("shared", **kw)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def trip(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.minimum_calls):
        with pytest.raises(Boom):
            await breaker.call(fail)
    assert breaker.state is BreakerState.OPEN
    await settle()


async def test_one_trips_and_the_other_follows_within_the_sync_interval() -> None:
    clock = ManualClock()
    store = InMemoryBreakerStore(sync_interval=0.5, clock=clock)
    a, b = pair(clock, store)
    await b.call(ok)  # b synced at t=0
    await trip(a)
    assert b.state is BreakerState.CLOSED  # not yet: b reads again after sync_interval
    await clock.advance(0.5)
    await b.call(ok)  # this call still goes through and schedules the read
    await settle()
    assert b.state is BreakerState.OPEN
    assert b.snapshot().open_remaining == pytest.approx(9.5)
    with pytest.raises(CircuitOpenError):
        await b.call(ok)


async def test_half_open_trials_are_gated_across_processes_and_recovery_is_shared() -> None:
    clock = ManualClock()
    store = InMemoryBreakerStore(sync_interval=0.5, clock=clock)
    a, b = pair(clock, store)
    await trip(a)
    await clock.advance(0.5)
    await b.call(ok)
    await settle()
    await clock.advance(10.0)
    gate = asyncio.Event()
    entered = 0

    async def trial() -> str:
        nonlocal entered
        entered += 1
        await gate.wait()
        return "ok"

    tasks = [asyncio.create_task(x.call(trial)) for x in (a, b) for _ in range(50)]
    await settle()
    assert entered == 2  # two permits in total, not two per process
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(r == "ok" for r in results) == 2
    assert (await store.read("shared")).state == "closed"
    await clock.advance(0.5)
    for x in (a, b):
        await x.call(ok)
    await settle()
    assert a.state is BreakerState.CLOSED
    assert b.state is BreakerState.CLOSED


async def test_failed_shared_trials_reopen_everyone() -> None:
    clock = ManualClock()
    store = InMemoryBreakerStore(sync_interval=0.5, clock=clock)
    a, b = pair(clock, store, half_open_max_calls=1)
    await trip(a)
    await clock.advance(0.5)
    await b.call(ok)  # b reads the shared state and opens
    await settle()
    assert b.state is BreakerState.OPEN
    await clock.advance(9.5)
    with pytest.raises(Boom):
        await b.call(fail)  # b's trial fails for everyone
    assert b.state is BreakerState.OPEN
    shared = await store.read("shared")
    assert shared.state == "open"
    assert shared.remaining == pytest.approx(10.0)
    with pytest.raises(CircuitOpenError):
        await a.call(ok)  # a's open time is over, but the store says open: a follows it
    assert a.state is BreakerState.OPEN


async def test_a_dead_permit_holder_is_covered_by_the_lease() -> None:
    clock = ManualClock()
    store = InMemoryBreakerStore(clock=clock)
    assert (await store.trip("x", 1.0)).state == "open"
    await clock.advance(1.0)
    assert (await store.acquire_trial("x", 1, 5.0)).admitted
    assert not (await store.acquire_trial("x", 1, 5.0)).admitted
    await clock.advance(5.0)  # the holder never reported
    assert (await store.acquire_trial("x", 1, 5.0)).admitted


async def test_a_stale_trial_report_is_ignored() -> None:
    store = InMemoryBreakerStore(clock=ManualClock())
    await store.trip("x", 0.0)
    first = await store.acquire_trial("x", 1, 5.0)
    await store.reset("x")
    await store.trip("x", 0.0)
    await store.acquire_trial("x", 1, 5.0)
    report = await store.report_trial(
        "x",
        generation=first.generation,
        failed=True,
        slow=False,
        max_calls=1,
        failure_rate_threshold=0.5,
        slow_call_rate_threshold=1.0,
        open_seconds=10,
    )
    assert report.state == "half_open"


class BrokenStore(InMemoryBreakerStore):
    async def _down(self, *args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("store down")

    read = trip = acquire_trial = release_trial = report_trial = reset = _down  # type: ignore[assignment]


async def test_a_broken_store_never_fails_the_caller(caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()
    a, _ = pair(clock, BrokenStore(clock=clock))
    await trip(a)
    await clock.advance(10.0)
    assert await a.call(ok) == "ok"  # trials decided locally
    assert await a.call(ok) == "ok"
    await settle()
    assert a.state is BreakerState.CLOSED
    assert not a.snapshot().store_healthy
    warnings = [r for r in caplog.records if "shared store failed" in r.getMessage()]
    assert len(warnings) == 1  # logged once per outage, not per call


class FlakyTripStore(InMemoryBreakerStore):
    """Loses the first ``losses`` trips, as a store that timed out would."""

    def __init__(self, losses: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.losses = losses

    async def trip(self, name: str, open_seconds: float) -> Any:
        if self.losses:
            self.losses -= 1
            raise TimeoutError
        return await super().trip(name, open_seconds)


async def test_a_trip_the_store_missed_is_published_again_without_further_calls() -> None:
    clock = ManualClock()
    store = FlakyTripStore(losses=2, sync_interval=0.5, clock=clock)
    a, b = pair(clock, store)
    await trip(a)  # the publish fails: a now gets no traffic at all
    assert (await store.read("shared")).state == "closed"
    await clock.advance(0.5)
    await settle()
    assert (await store.read("shared")).state == "closed"  # the second attempt failed too
    await clock.advance(0.5)
    await settle()
    shared = await store.read("shared")
    assert shared.state == "open"
    assert shared.remaining == pytest.approx(9.0)  # what is left of a's open period
    await clock.advance(0.5)
    await b.call(ok)  # b's next sync adopts a's trip
    await settle()
    assert b.state is BreakerState.OPEN


async def test_a_missed_trip_is_not_published_after_its_open_period() -> None:
    clock = ManualClock()
    store = FlakyTripStore(losses=1, sync_interval=0.5, clock=clock)
    a, _ = pair(clock, store, open_duration=0.4)
    await trip(a)
    await clock.advance(0.5)  # the open period ended before the retry was due
    await settle()
    assert (await store.read("shared")).state == "closed"
    assert store.losses == 0


@pytest.mark.parametrize("kwargs", [{"sync_interval": 0}, {"timeout": -1}])
def test_bad_store_configuration(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        InMemoryBreakerStore(**kwargs)


async def test_a_process_waiting_on_other_processes_trials_learns_their_verdict() -> None:
    clock = ManualClock()
    store = InMemoryBreakerStore(sync_interval=0.5, clock=clock)
    a, b = pair(clock, store, half_open_max_calls=2)
    await b.call(ok)
    await trip(a)
    await clock.advance(0.5)
    await b.call(ok)
    await settle()
    await clock.advance(10.0)
    gate = asyncio.Event()

    async def trial() -> str:
        await gate.wait()
        return "ok"

    # a takes one shared permit, b the other; then b's local round is used up
    ta = asyncio.create_task(a.call(trial))
    tb = asyncio.create_task(b.call(trial))
    await settle()
    with pytest.raises(CircuitOpenError):
        await b.call(ok)
    gate.set()
    await asyncio.gather(ta, tb)
    assert (await store.read("shared")).state == "closed"
    await clock.advance(0.5)
    for x in (a, b):  # the first reporter heard "half_open"; it learns the verdict by a read
        with contextlib.suppress(CircuitOpenError):
            await x.call(ok)
    await settle()
    for x in (a, b):
        assert await x.call(ok) == "ok"
        assert x.state is BreakerState.CLOSED


async def test_an_expired_shared_trial_lease_restarts_the_trials() -> None:
    clock = ManualClock()
    store = InMemoryBreakerStore(sync_interval=0.5, clock=clock)
    a, _ = pair(clock, store, half_open_max_calls=1, open_duration=2.0)
    await trip(a)
    await clock.advance(2.0)
    # another process (simulated straight on the store) took the only permit and died
    assert (await store.acquire_trial("shared", 1, 2.0)).admitted
    with pytest.raises(CircuitOpenError):
        await a.call(ok)  # a's local permit is refused by the store
    await clock.advance(2.5)  # the dead holder's lease runs out
    with contextlib.suppress(CircuitOpenError):
        await a.call(ok)  # schedules a read of the shared state
    await settle()
    assert await a.call(ok) == "ok"  # a fresh trial round, decided by a
    assert a.state is BreakerState.CLOSED


async def test_aclose_waits_for_background_store_operations() -> None:
    clock = ManualClock()
    store = InMemoryBreakerStore(clock=clock)
    a, _ = pair(clock, store)
    for _ in range(3):
        with pytest.raises(Boom):
            await a.call(fail)  # the trip is published in the background
    assert a._tasks
    await a.aclose()
    assert not a._tasks
    assert (await store.read("shared")).state == "open"
