from __future__ import annotations

import asyncio
import inspect
import logging
import sys
from typing import Any

import pytest

import scalekit
from scalekit.errors import CircuitOpenError, ConfigurationError
from scalekit.resilience import (
    BreakerState,
    CircuitBreaker,
    CountWindow,
    StateChange,
    TimeWindow,
)
from scalekit.testing import ManualClock


class Boom(Exception):
    pass


class ClientError(Exception):
    pass


async def ok(value: Any = "ok") -> Any:
    return value


async def fail(exc: BaseException | None = None) -> None:
    raise exc or Boom("down")


def make(clock: ManualClock, **kw: Any) -> CircuitBreaker:
    kw.setdefault("window", CountWindow(10))
    kw.setdefault("minimum_calls", 4)
    kw.setdefault("open_duration", 10.0)
    kw.setdefault("half_open_max_calls", 2)
    return CircuitBreaker("svc", clock=clock, **kw)


async def failures(breaker: CircuitBreaker, n: int) -> None:
    for _ in range(n):
        with pytest.raises(Boom):
            await breaker.call(fail)


async def open_breaker(breaker: CircuitBreaker) -> None:
    await failures(breaker, breaker.minimum_calls)
    assert breaker.state is BreakerState.OPEN


async def test_stays_closed_below_minimum_calls() -> None:
    breaker = make(ManualClock())
    await failures(breaker, 3)
    assert breaker.state is BreakerState.CLOSED
    await failures(breaker, 1)
    assert breaker.state is BreakerState.OPEN


async def test_opens_when_failure_rate_reaches_threshold() -> None:
    breaker = make(ManualClock(), failure_rate_threshold=0.5)
    for _ in range(3):
        await breaker.call(ok)
    await failures(breaker, 2)  # 2/5 = 0.4
    assert breaker.state is BreakerState.CLOSED
    await failures(breaker, 1)  # 3/6 = 0.5
    assert breaker.state is BreakerState.OPEN


async def test_a_success_that_brings_the_window_to_minimum_can_open_it() -> None:
    breaker = make(ManualClock(), minimum_calls=4, failure_rate_threshold=0.5)
    await failures(breaker, 3)
    await breaker.call(ok)  # 3/4 = 0.75 once the minimum is reached
    assert breaker.state is BreakerState.OPEN


async def test_old_failures_leave_the_count_window() -> None:
    breaker = make(ManualClock(), window=CountWindow(4), minimum_calls=4)
    await failures(breaker, 1)
    for _ in range(4):
        await breaker.call(ok)
    snap = breaker.snapshot()
    assert (snap.calls, snap.failures) == (4, 0)


async def test_open_rejects_without_calling_and_reports_retry_after() -> None:
    clock = ManualClock()
    breaker = make(clock)
    await open_breaker(breaker)
    await clock.advance(4.0)
    called = False

    async def spy() -> None:
        nonlocal called
        called = True

    with pytest.raises(CircuitOpenError) as info:
        await breaker.call(spy)
    assert not called
    assert info.value.name == "svc"
    assert info.value.retry_after == pytest.approx(6.0)
    assert "svc" in str(info.value)


async def test_each_rejection_is_a_fresh_exception_with_a_short_traceback() -> None:
    breaker = make(ManualClock())
    await open_breaker(breaker)
    seen: list[CircuitOpenError] = []
    for _ in range(200):
        try:
            await breaker.call(ok)
        except CircuitOpenError as exc:
            seen.append(exc)
    assert len({id(e) for e in seen}) == 200
    depths = []
    for exc in (seen[0], seen[-1]):
        depth, tb = 0, exc.__traceback__
        while tb is not None:
            depth, tb = depth + 1, tb.tb_next
        depths.append(depth)
    assert depths[0] == depths[1]
    assert depths[1] < 10
    assert breaker.snapshot().total_rejected == 200


async def test_half_open_admits_exact_trials_then_closes() -> None:
    clock = ManualClock()
    breaker = make(clock, half_open_max_calls=2)
    await open_breaker(breaker)
    await clock.advance(10.0)
    assert breaker.state is BreakerState.HALF_OPEN
    await breaker.call(ok)
    assert breaker.state is BreakerState.HALF_OPEN
    await breaker.call(ok)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.snapshot().calls == 0  # a fresh window


async def test_half_open_reopens_when_trials_fail() -> None:
    clock = ManualClock()
    breaker = make(clock, half_open_max_calls=2)
    await open_breaker(breaker)
    await clock.advance(10.0)
    await breaker.call(ok)
    await failures(breaker, 1)  # 1/2 = 0.5 >= 0.5
    assert breaker.state is BreakerState.OPEN
    assert breaker.snapshot().open_remaining == pytest.approx(10.0)


async def test_open_backoff_grows_and_is_capped() -> None:
    clock = ManualClock()
    breaker = make(clock, half_open_max_calls=1, open_backoff=2.0, max_open_duration=25.0)
    await open_breaker(breaker)
    expected = [20.0, 25.0, 25.0]
    for seconds in expected:
        await clock.advance(breaker.snapshot().open_remaining)
        await failures(breaker, 1)
        assert breaker.snapshot().open_remaining == pytest.approx(seconds)
    await clock.advance(25.0)
    await breaker.call(ok)
    assert breaker.state is BreakerState.CLOSED
    await open_breaker(breaker)
    assert breaker.snapshot().open_remaining == pytest.approx(10.0)


async def test_thousand_concurrent_callers_in_half_open_make_exactly_the_permitted_trials() -> None:
    clock = ManualClock()
    breaker = make(clock, half_open_max_calls=5)
    await open_breaker(breaker)
    await clock.advance(10.0)
    release = asyncio.Event()
    entered = 0

    async def trial() -> str:
        nonlocal entered
        entered += 1
        await release.wait()
        return "ok"

    tasks = [asyncio.create_task(breaker.call(trial)) for _ in range(1000)]
    while sum(t.done() for t in tasks) < 995:  # noqa: ASYNC110 - polls the clock's state
        await asyncio.sleep(0)
    assert entered == 5
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(r == "ok" for r in results) == 5
    assert sum(isinstance(r, CircuitOpenError) for r in results) == 995
    assert breaker.state is BreakerState.CLOSED


async def test_slow_successes_count_against_the_breaker() -> None:
    clock = ManualClock()
    breaker = make(clock, slow_call_duration=1.0, slow_call_rate_threshold=0.5)

    async def slow() -> str:
        await clock.sleep(2.0)
        return "late"

    async def drive() -> None:
        for _ in range(4):
            assert await breaker.call(slow) == "late"

    task = asyncio.create_task(drive())
    while not task.done():
        await clock.advance(2.0)
    await task
    snap = breaker.snapshot()
    assert snap.state is BreakerState.OPEN
    assert snap.total_failures == 0


async def test_slow_call_exactly_at_threshold_counts_even_at_time_zero() -> None:
    clock = ManualClock(start=0.0)
    breaker = make(clock, slow_call_duration=1.0, minimum_calls=1, slow_call_rate_threshold=1.0)

    async def slow() -> None:
        clock.set(clock.monotonic() + 1.0)

    await breaker.call(slow)
    assert breaker.state is BreakerState.OPEN


async def test_cancellation_is_never_counted_and_never_swallowed() -> None:
    clock = ManualClock()
    breaker = make(clock, minimum_calls=1, record=BaseException)
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(breaker.call(hang))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    snap = breaker.snapshot()
    assert (snap.state, snap.calls, snap.failures) == (BreakerState.CLOSED, 0, 0)


async def test_cancelled_trial_gives_its_permit_back() -> None:
    clock = ManualClock()
    breaker = make(clock, half_open_max_calls=1)
    await open_breaker(breaker)
    await clock.advance(10.0)
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(breaker.call(hang))
    await started.wait()
    with pytest.raises(CircuitOpenError):
        await breaker.call(ok)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.snapshot().half_open_permits == 1
    await breaker.call(ok)
    assert breaker.state is BreakerState.CLOSED


async def test_record_and_ignore_predicates() -> None:
    class HTTPError(Exception):
        def __init__(self, status: int) -> None:
            self.status = status

    breaker = make(
        ManualClock(),
        record=lambda e: isinstance(e, HTTPError) and e.status >= 500,
        ignore=lambda e: isinstance(e, HTTPError) and 400 <= e.status < 500,
    )
    for status in (404, 404, 404, 404, 404):
        with pytest.raises(HTTPError):
            await breaker.call(fail, HTTPError(status))
    assert breaker.snapshot().calls == 0
    with pytest.raises(ValueError):
        await breaker.call(fail, ValueError("not recorded: counts as a success"))
    for _ in range(3):
        with pytest.raises(HTTPError):
            await breaker.call(fail, HTTPError(503))
    snap = breaker.snapshot()
    assert (snap.calls, snap.failures, snap.state) == (4, 3, BreakerState.OPEN)


async def test_record_takes_exception_types() -> None:
    breaker = make(ManualClock(), record=(Boom,), ignore=ClientError, minimum_calls=1)
    with pytest.raises(ClientError):
        await breaker.call(fail, ClientError())
    assert breaker.state is BreakerState.CLOSED
    await failures(breaker, 1)
    assert breaker.state is BreakerState.OPEN


async def test_record_result_counts_bad_results_as_failures() -> None:
    breaker = make(ManualClock(), minimum_calls=2, record_result=lambda r: r >= 500)
    assert await breaker.call(ok, 503) == 503
    assert await breaker.call(ok, 500) == 500
    assert breaker.state is BreakerState.OPEN


async def test_time_window_forgets_old_outcomes() -> None:
    clock = ManualClock()
    breaker = make(clock, window=TimeWindow(seconds=10, buckets=10), minimum_calls=3)
    await failures(breaker, 2)
    await clock.advance(11.0)
    await failures(breaker, 1)
    snap = breaker.snapshot()
    assert (snap.calls, snap.failures, snap.state) == (1, 1, BreakerState.CLOSED)
    await failures(breaker, 2)
    assert breaker.state is BreakerState.OPEN


async def test_time_window_can_open_as_successes_age_out() -> None:
    clock = ManualClock()
    breaker = make(clock, window=TimeWindow(seconds=10, buckets=10), minimum_calls=2)
    for _ in range(3):
        await breaker.call(ok)
    await clock.advance(6.0)
    await failures(breaker, 1)  # 1/4
    await clock.advance(5.0)  # the three successes leave the window
    await breaker.call(ok)  # 1/2 = 0.5
    assert breaker.state is BreakerState.OPEN


async def test_outcome_of_a_call_admitted_before_a_transition_is_discarded() -> None:
    clock = ManualClock()
    breaker = make(clock, half_open_max_calls=1)
    gate = asyncio.Event()

    async def straggler() -> None:
        await gate.wait()
        raise Boom("late")

    task = asyncio.create_task(breaker.call(straggler))
    await asyncio.sleep(0)
    await open_breaker(breaker)
    await clock.advance(10.0)
    assert breaker.state is BreakerState.HALF_OPEN
    gate.set()
    with pytest.raises(Boom):
        await task
    assert breaker.state is BreakerState.HALF_OPEN  # the straggler decided nothing
    await breaker.call(ok)
    assert breaker.state is BreakerState.CLOSED


async def test_force_open_reset_and_disable() -> None:
    clock = ManualClock()
    breaker = make(clock)
    breaker.force_open()
    assert breaker.state is BreakerState.FORCED_OPEN
    await clock.advance(1000.0)
    with pytest.raises(CircuitOpenError, match="forced open"):
        await breaker.call(ok)
    breaker.reset()
    assert await breaker.call(ok) == "ok"
    breaker.disable()
    await failures(breaker, 20)
    assert breaker.state is BreakerState.DISABLED
    breaker.reset()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.snapshot().calls == 0


async def test_listeners_get_every_change_and_a_failing_listener_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    breaker = make(clock, half_open_max_calls=1)
    changes: list[StateChange] = []

    def broken(change: StateChange) -> None:
        raise RuntimeError("listener bug")

    breaker.add_listener(broken)
    breaker.add_listener(changes.append)
    with caplog.at_level(logging.INFO, logger="scalekit.resilience"):
        await open_breaker(breaker)
        await clock.advance(10.0)
        await breaker.call(ok)
    assert [(c.previous, c.current) for c in changes] == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]
    assert "failure rate" in changes[0].reason
    assert changes[0].at == clock.time() - 10.0
    assert any("listener failed" in r.message for r in caplog.records)
    assert any("closed -> open" in r.getMessage() for r in caplog.records)
    breaker.remove_listener(changes.append)
    breaker.remove_listener(changes.append)  # unknown: ignored
    breaker.force_open()
    assert len(changes) == 3


async def test_async_with_records_outcomes_per_task() -> None:
    clock = ManualClock()
    breaker = make(clock, minimum_calls=2)

    async def use(raise_: bool) -> None:
        async with breaker:
            await asyncio.sleep(0)
            if raise_:
                raise Boom("x")

    results = await asyncio.gather(use(True), use(False), use(True), return_exceptions=True)
    assert sum(isinstance(r, Boom) for r in results) == 2
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(CircuitOpenError):
        async with breaker:
            pytest.fail("must not run")


async def test_nested_async_with_of_two_breakers() -> None:
    clock = ManualClock()
    outer, inner = make(clock), CircuitBreaker("inner", clock=clock)
    async with outer, inner:
        pass
    assert outer.snapshot().calls == 1
    assert inner.snapshot().calls == 1


async def test_decorator_keeps_signature_and_counts() -> None:
    breaker = make(ManualClock(), minimum_calls=3)

    @breaker
    async def charge(order_id: str, *, amount: int = 1) -> str:
        """Charge an order."""
        if amount < 0:
            raise Boom("negative")
        return f"{order_id}:{amount}"

    assert charge.__name__ == "charge"
    assert charge.__doc__ == "Charge an order."
    assert list(inspect.signature(charge).parameters) == ["order_id", "amount"]
    assert await charge("a", amount=2) == "a:2"
    with pytest.raises(Boom):
        await charge("a", amount=-1)
    with pytest.raises(Boom):
        await charge("a", amount=-1)
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(CircuitOpenError):
        await charge("a")


def test_decorating_a_sync_function_is_refused() -> None:
    breaker = CircuitBreaker("x")
    with pytest.raises(ConfigurationError, match="async"):
        breaker(lambda: None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failure_rate_threshold": 0},
        {"failure_rate_threshold": 1.5},
        {"slow_call_rate_threshold": -1},
        {"slow_call_duration": 0},
        {"minimum_calls": 0},
        {"open_duration": -1},
        {"half_open_max_calls": 0},
        {"open_backoff": 0.5},
        {"window": 100},
        {"record": "ValueError"},
        {"record_result": 3},
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        CircuitBreaker("x", **kwargs)


@pytest.mark.parametrize("window", [lambda: CountWindow(0), lambda: TimeWindow(seconds=0)])
def test_bad_windows_are_refused(window: Any) -> None:
    with pytest.raises(ConfigurationError):
        window()


def test_empty_name_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        CircuitBreaker("")


def test_snapshot_of_a_new_breaker() -> None:
    snap = CircuitBreaker("fresh").snapshot()
    assert snap.state is BreakerState.CLOSED
    assert (snap.calls, snap.failure_rate, snap.open_remaining) == (0, 0.0, 0.0)
    assert snap.store_healthy


def test_circuit_breaker_is_reexported_lazily_from_scalekit() -> None:
    assert scalekit.CircuitBreaker is CircuitBreaker
    assert "CircuitBreaker" in scalekit.__all__
    with pytest.raises(AttributeError):
        scalekit.NotAThing  # type: ignore[attr-defined]  # noqa: B018


def test_import_scalekit_does_not_import_resilience() -> None:
    import subprocess

    code = "import scalekit, sys; assert 'scalekit.resilience' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": "src"})


def test_circuit_open_error_is_reexported() -> None:
    from scalekit import resilience

    assert resilience.CircuitOpenError is CircuitOpenError


async def test_metric_callbacks_report_outcomes_and_state() -> None:
    from scalekit.resilience import breaker as module

    b = CircuitBreaker("metrics-svc", minimum_calls=4, ignore=ClientError, clock=ManualClock())
    await b.call(ok)
    with pytest.raises(ClientError):
        await b.call(fail, ClientError())
    while b.state is BreakerState.CLOSED:
        with pytest.raises(Boom):
            await b.call(fail)
    with pytest.raises(CircuitOpenError):
        await b.call(ok)
    mine = {"scalekit.breaker.name": "metrics-svc"}
    calls = {
        o.attributes["outcome"]: o.value
        for o in module._observe_calls(None)
        if o.attributes is not None and o.attributes["scalekit.breaker.name"] == "metrics-svc"
    }
    assert calls == {"success": 1, "failure": 3, "ignored": 1, "rejected": 1}
    assert [o.value for o in module._observe_state(None) if o.attributes == mine] == [1]


async def test_half_open_max_wait_reopens_when_trials_hang() -> None:
    clock = ManualClock()
    breaker = make(clock, half_open_max_calls=1, half_open_max_wait=5.0)
    await open_breaker(breaker)
    await clock.advance(10.0)
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(breaker.call(hang))
    await started.wait()
    with pytest.raises(CircuitOpenError, match="all 1 trial calls are in flight"):
        await breaker.call(ok)
    await clock.advance(5.0)
    with pytest.raises(CircuitOpenError):
        await breaker.call(ok)
    assert breaker.state is BreakerState.OPEN
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.state is BreakerState.OPEN  # the stale trial's cancellation changes nothing


async def test_retry_after_of_the_tripping_failure_sets_the_open_time_within_a_cap() -> None:
    class Throttled(Exception):
        def __init__(self, retry_after: float) -> None:
            self.retry_after = retry_after

    clock = ManualClock()
    breaker = make(clock, minimum_calls=1, open_duration=10.0)
    with pytest.raises(Throttled):
        await breaker.call(fail, Throttled(45.0))
    assert breaker.snapshot().open_remaining == pytest.approx(45.0)
    capped = make(clock, minimum_calls=1, open_duration=10.0, max_open_duration=20.0)
    with pytest.raises(Throttled):
        await capped.call(fail, Throttled(45.0))
    assert capped.snapshot().open_remaining == pytest.approx(20.0)
    default_cap = make(clock, minimum_calls=1, open_duration=1.0)
    with pytest.raises(Throttled):
        await default_cap.call(fail, Throttled(3600.0))
    assert default_cap.snapshot().open_remaining == pytest.approx(10.0)
