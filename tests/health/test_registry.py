from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from scalekit.errors import ConfigurationError
from scalekit.health import (
    LIVENESS,
    READINESS,
    STARTUP,
    CheckResult,
    HealthRegistry,
    Status,
)
from scalekit.testing import ManualClock
from tests.health.helpers import until


class Counter:
    """A check that counts its runs and returns a configurable result."""

    def __init__(self, result: CheckResult | None = None, *, gate: asyncio.Event | None = None):
        self.calls = 0
        self.result = result
        self.gate = gate

    async def __call__(self) -> CheckResult | None:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        return self.result


def registry(clock: ManualClock | None = None, **kwargs: object) -> HealthRegistry:
    return HealthRegistry(clock=clock or ManualClock(), started=True, **kwargs)  # type: ignore[arg-type]


async def test_empty_readiness_passes() -> None:
    report = await registry().run(READINESS)
    assert report.status is Status.PASS
    assert report.checks == ()


async def test_none_is_a_pass_with_response_time() -> None:
    reg = registry()
    reg.add("app:ok", Counter())
    report = await reg.run()
    outcome = report.by_name()["app:ok"]
    assert outcome.status is Status.PASS
    assert outcome.observed_unit == "ms"
    assert outcome.output is None


async def test_critical_failure_fails_the_group() -> None:
    reg = registry()
    reg.add("a:ok", Counter())
    reg.add("b:down", Counter(CheckResult.fail("down")))
    report = await reg.run(READINESS)
    assert report.status is Status.FAIL
    assert not report.healthy


async def test_non_critical_failure_degrades_to_warn() -> None:
    reg = registry()
    reg.add("a:ok", Counter())
    reg.add("search:down", Counter(CheckResult.fail("down")), critical=False)
    report = await reg.run(READINESS)
    assert report.status is Status.WARN
    outcome = report.by_name()["search:down"]
    assert outcome.status is Status.FAIL  # the check's own status is kept for operators
    assert outcome.effective_status is Status.WARN


async def test_warn_result_makes_group_warn() -> None:
    reg = registry()
    reg.add("a:slow", Counter(CheckResult.warn("slow", 900, "ms")))
    assert (await reg.run(READINESS)).status is Status.WARN


async def test_exception_is_a_fail_with_redacted_output() -> None:
    reg = registry()

    async def boom() -> None:
        raise OSError("cannot connect to postgresql://app:hunter2@db:5432/app")

    reg.add("postgres:conn", boom)
    outcome = (await reg.run()).by_name()["postgres:conn"]
    assert outcome.status is Status.FAIL
    assert outcome.error == "OSError"
    assert outcome.output is not None
    assert "hunter2" not in outcome.output
    assert "postgresql://app:***@db:5432/app" in outcome.output


async def test_result_output_is_redacted_and_truncated() -> None:
    reg = registry()
    secret = "redis://:topsecret@cache:6379/0 " + "x" * 5000
    reg.add("redis:x", Counter(CheckResult.fail(secret)))
    outcome = (await reg.run()).by_name()["redis:x"]
    assert outcome.output is not None
    assert "topsecret" not in outcome.output
    assert len(outcome.output) <= 1000


async def test_wrong_return_type_fails() -> None:
    reg = registry()

    async def wrong() -> object:
        return "ok"

    reg.add("a:wrong", wrong)  # type: ignore[arg-type]
    outcome = (await reg.run()).by_name()["a:wrong"]
    assert outcome.status is Status.FAIL
    assert "return None or a CheckResult" in (outcome.output or "")


async def test_sync_function_fails_with_hint() -> None:
    reg = registry()
    reg.add("a:sync", lambda: None)  # type: ignore[arg-type,return-value]
    outcome = (await reg.run()).by_name()["a:sync"]
    assert outcome.status is Status.FAIL
    assert "async def" in (outcome.output or "")


async def test_hung_check_times_out_and_probe_returns() -> None:
    clock = ManualClock()
    reg = registry(clock)

    async def never() -> None:
        await asyncio.Event().wait()

    reg.add("hung:ping", never, timeout=1.0)
    reg.add("ok:ping", Counter())
    probe = asyncio.ensure_future(reg.run(READINESS))
    await until(lambda: clock.sleepers == 1)
    assert not probe.done()
    await clock.advance(1.0)
    report = await asyncio.wait_for(probe, 5)
    outcome = report.by_name()["hung:ping"]
    assert outcome.status is Status.FAIL
    assert outcome.output == "timed out after 1.0s"
    assert outcome.error == "CheckTimeoutError"
    assert report.by_name()["ok:ping"].status is Status.PASS


async def test_check_that_ignores_cancellation_cannot_hang_the_probe() -> None:
    clock = ManualClock()
    reg = registry(clock)
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # swallows cancellation

    reg.add("stubborn:x", stubborn, timeout=0.5)
    probe = asyncio.ensure_future(reg.run(READINESS))
    await until(lambda: clock.sleepers == 1)
    await clock.advance(0.5)
    report = await asyncio.wait_for(probe, 5)
    assert report.by_name()["stubborn:x"].output == "timed out after 0.5s"
    release.set()
    await asyncio.sleep(0)


async def test_budget_caps_check_timeouts() -> None:
    clock = ManualClock()
    reg = registry(clock, budget=0.25)

    async def never() -> None:
        await asyncio.Event().wait()

    reg.add("hung:x", never, timeout=10.0)
    probe = asyncio.ensure_future(reg.run(READINESS))
    await until(lambda: clock.sleepers == 1)
    await clock.advance(0.25)
    report = await asyncio.wait_for(probe, 5)
    assert report.by_name()["hung:x"].output == "timed out after 0.25s"


async def test_checks_run_concurrently() -> None:
    reg = registry()
    started: list[str] = []
    gate = asyncio.Event()

    def make(name: str) -> Callable[[], Awaitable[None]]:
        async def check() -> None:
            started.append(name)
            await gate.wait()

        return check

    for name in ("a:x", "b:x", "c:x"):
        reg.add(name, make(name))
    probe = asyncio.ensure_future(reg.run(READINESS))
    await until(lambda: len(started) == 3)  # all three started before any finished
    gate.set()
    assert (await probe).status is Status.PASS


async def test_results_are_cached_for_the_window() -> None:
    clock = ManualClock()
    reg = registry(clock)
    check = Counter()
    reg.add("a:x", check, cache_for=5.0)
    first = await reg.run()
    await reg.run()
    await clock.advance(4.9)
    await reg.run()
    assert check.calls == 1
    await clock.advance(0.2)
    second = await reg.run()
    assert check.calls == 2
    assert reg.runs("a:x") == 2
    assert first.checks[0] is not second.checks[0]


async def test_cache_for_zero_reruns_every_probe() -> None:
    reg = registry()
    check = Counter()
    reg.add("a:x", check, cache_for=0)
    for _ in range(3):
        await reg.run()
    assert check.calls == 3


async def test_invalidate_drops_the_cache() -> None:
    reg = registry()
    check = Counter()
    reg.add("a:x", check, cache_for=60)
    await reg.run()
    reg.invalidate("a:x")
    await reg.run()
    reg.invalidate()
    await reg.run()
    assert check.calls == 3


async def test_thousand_concurrent_probes_run_each_check_once_per_window() -> None:
    clock = ManualClock()
    reg = registry(clock)
    gate = asyncio.Event()
    slow, fast = Counter(gate=gate), Counter()
    reg.add("slow:x", slow, cache_for=2.0, timeout=30.0)
    reg.add("fast:x", fast, cache_for=2.0)
    probes = [asyncio.ensure_future(reg.run(READINESS)) for _ in range(1000)]
    await until(lambda: slow.calls == 1)
    gate.set()
    reports = await asyncio.gather(*probes)
    assert all(r.status is Status.PASS for r in reports)
    assert (slow.calls, fast.calls) == (1, 1)
    # a second storm inside the window is answered from the cache
    await asyncio.gather(*(reg.run(READINESS) for _ in range(1000)))
    assert (slow.calls, fast.calls) == (1, 1)
    # the next window: exactly one more run each
    await clock.advance(2.0)
    await asyncio.gather(*(reg.run(READINESS) for _ in range(1000)))
    assert (slow.calls, fast.calls) == (2, 2)


async def test_cancelled_probe_does_not_cancel_the_shared_run() -> None:
    reg = registry()
    gate = asyncio.Event()
    check = Counter(gate=gate)
    reg.add("a:x", check)
    first = asyncio.ensure_future(reg.run())
    await until(lambda: check.calls == 1)
    second = asyncio.ensure_future(reg.run())
    await asyncio.sleep(0)
    first.cancel()  # the client went away
    with pytest.raises(asyncio.CancelledError):
        await first
    gate.set()
    report = await second
    assert report.status is Status.PASS
    assert check.calls == 1


async def test_unchanged_results_return_the_same_report_object() -> None:
    reg = registry()
    reg.add("a:x", Counter(), cache_for=60)
    first = await reg.run(READINESS)
    assert await reg.run(READINESS) is first


async def test_liveness_defaults_to_event_loop_only() -> None:
    reg = registry()
    reg.add("postgres:x", Counter(CheckResult.fail("down")))
    report = await reg.run(LIVENESS)
    assert [c.name for c in report.checks] == ["eventloop:lag"]
    assert report.status is Status.PASS


async def test_no_event_loop_check_when_disabled() -> None:
    reg = registry(event_loop_check=False)
    assert reg.names == ()
    assert (await reg.run(LIVENESS)).checks == ()


async def test_custom_groups_and_multi_group_checks() -> None:
    reg = registry(event_loop_check=False)
    reg.add("a:x", Counter(), groups=("readiness", "deep"))
    reg.add("b:x", Counter(CheckResult.fail("no")), groups="deep")
    assert (await reg.run(READINESS)).status is Status.PASS
    deep = await reg.run("deep")
    assert deep.status is Status.FAIL
    assert [c.name for c in deep.checks] == ["a:x", "b:x"]
    assert reg.groups()["deep"] == ("a:x", "b:x")
    assert (await reg.run("unknown-group")).status is Status.PASS


async def test_startup_gates_readiness_and_startup_until_mark_started() -> None:
    reg = HealthRegistry(clock=ManualClock())
    warm = Counter()
    reg.add("cache:warm", warm, groups=(STARTUP,))
    for group in (STARTUP, READINESS):
        report = await reg.run(group)
        assert report.status is Status.FAIL
        assert "mark_started" in (report.output or "")
    assert (await reg.run(LIVENESS)).status is Status.PASS
    assert warm.calls == 0
    reg.mark_started()
    assert (await reg.run(STARTUP)).status is Status.PASS
    assert (await reg.run(READINESS)).status is Status.PASS
    assert warm.calls == 1


async def test_begin_shutdown_fails_readiness_at_once_and_keeps_liveness() -> None:
    reg = registry()
    gate = asyncio.Event()
    dep = Counter(gate=gate)
    reg.add("db:x", dep, cache_for=0)
    called: list[bool] = []
    reg.on_shutdown(lambda: called.append(True))
    reg.begin_shutdown()
    reg.begin_shutdown()  # idempotent
    report = await reg.run(READINESS)  # answers without waiting on the hung dependency
    assert report.status is Status.FAIL
    assert "shutting down" in (report.output or "")
    assert dep.calls == 0
    assert (await reg.run(LIVENESS)).status is Status.PASS
    assert (await reg.run(STARTUP)).status is Status.PASS
    assert called == [True]
    assert reg.shutting_down


async def test_all_view_while_shutting_down_runs_checks_but_fails() -> None:
    reg = registry()
    reg.add("db:x", Counter())
    reg.begin_shutdown()
    report = await reg.run(None)
    assert report.status is Status.FAIL
    assert {c.name for c in report.checks} == {"eventloop:lag", "db:x"}


async def test_failing_shutdown_callback_does_not_stop_shutdown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reg = registry()

    def bad() -> None:
        raise RuntimeError("nope")

    reg.on_shutdown(bad)
    reg.begin_shutdown()
    assert reg.shutting_down
    assert "on_shutdown callback failed" in caplog.text


async def test_decorator_registers() -> None:
    reg = registry()

    @reg.check("cache:warm", groups=("startup",), critical=False)
    async def cache_warm() -> None:
        return None

    assert "cache:warm" in reg.names
    assert reg.groups()[STARTUP] == ("cache:warm",)
    reg.remove("cache:warm")
    assert "cache:warm" not in reg.names
    with pytest.raises(KeyError):
        reg.remove("cache:warm")


async def test_status_transitions_are_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    reg = registry()
    reg.add("db:x", Counter(CheckResult.fail("down")), cache_for=0)
    caplog.set_level("INFO", logger="scalekit.health")
    for _ in range(3):
        await reg.run()
    assert caplog.text.count("health check db:x: fail") == 1


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"name": ""}, ConfigurationError),
        ({"name": "bad\nname"}, ConfigurationError),
        ({"name": 3}, ConfigurationError),
        ({"check": "not callable"}, TypeError),
        ({"timeout": 0}, ConfigurationError),
        ({"timeout": -1}, ConfigurationError),
        ({"timeout": float("nan")}, ConfigurationError),
        ({"timeout": "1"}, TypeError),
        ({"timeout": True}, TypeError),
        ({"cache_for": -1}, ConfigurationError),
        ({"groups": ()}, ConfigurationError),
        ({"groups": ("",)}, TypeError),
        ({"groups": (None,)}, TypeError),
    ],
)
def test_add_rejects_bad_arguments(kwargs: dict[str, object], error: type[Exception]) -> None:
    reg = HealthRegistry()
    args: dict[str, object] = {"name": "a:x", "check": Counter()} | kwargs
    with pytest.raises(error):
        reg.add(args.pop("name"), args.pop("check"), **args)  # type: ignore[arg-type]
    assert "a:x" not in reg.names


def test_duplicate_names_are_rejected() -> None:
    reg = HealthRegistry()
    reg.add("a:x", Counter())
    with pytest.raises(ConfigurationError, match="already registered"):
        reg.add("a:x", Counter())


@pytest.mark.parametrize("kwargs", [{"budget": 0}, {"cache_for": -1}, {"budget": float("inf")}])
def test_registry_rejects_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        HealthRegistry(**kwargs)  # type: ignore[arg-type]


def test_repr() -> None:
    reg = HealthRegistry()
    assert repr(reg) == "HealthRegistry(checks=1, starting)"
    reg.mark_started()
    reg.begin_shutdown()
    assert "shutting down" in repr(reg)


def test_a_registry_survives_event_loops_ending_mid_run() -> None:
    # A module-level registry used by several asyncio.run() calls (tests, CLIs): a run left in
    # flight when a loop ended must not poison the next loop.
    reg = HealthRegistry(started=True, event_loop_check=False)
    gate: list[asyncio.Event] = []

    async def check() -> None:
        event = asyncio.Event()
        gate.append(event)
        await event.wait()

    reg.add("a:x", check, cache_for=0)

    async def abandon() -> None:
        probe = asyncio.ensure_future(reg.run())
        await until(lambda: len(gate) == 1)
        assert not probe.done()

    asyncio.run(abandon())

    async def again() -> Status:
        probe = asyncio.ensure_future(reg.run())
        await until(lambda: len(gate) == 2)
        gate[1].set()
        return (await probe).status

    assert asyncio.run(again()) is Status.PASS


async def test_background_refresh_keeps_results_fresh_without_probes() -> None:
    clock = ManualClock()
    reg = registry(clock, event_loop_check=False)
    check = Counter()
    reg.add("a:x", check, cache_for=3.0)
    async with reg.refreshing(interval=1.0):
        await until(lambda: reg.runs("a:x") == 1)  # the first pass runs at once
        await until(lambda: clock.sleepers == 1)
        await clock.advance(1.0)  # t=1: the result (fresh until 3) outlives the next tick
        await until(lambda: clock.sleepers == 1)
        assert check.calls == 1
        await clock.advance(1.0)  # t=2: it expires by the next tick: refresh now
        await until(lambda: reg.runs("a:x") == 2)
        report = await reg.run(READINESS)  # answered from the cache
        assert check.calls == 2
        assert report.status is Status.PASS
    calls = check.calls
    await clock.advance(10.0)
    assert check.calls == calls  # the task stopped with the context
    assert clock.sleepers == 0


async def test_refreshing_rejects_bad_interval() -> None:
    reg = registry()
    with pytest.raises(ConfigurationError):
        async with reg.refreshing(interval=0):
            pass
