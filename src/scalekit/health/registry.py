"""The health registry: named checks, groups, concurrent runs, caching, startup and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from scalekit._redact import redact_text
from scalekit._telemetry import get_logger, meter, tracer
from scalekit.clock import SYSTEM_CLOCK, Clock, SystemClock
from scalekit.errors import CheckTimeoutError, ConfigurationError
from scalekit.health._model import CheckOutcome, CheckResult, HealthReport, Status
from scalekit.health.checks import event_loop_lag

__all__ = [
    "LIVENESS",
    "READINESS",
    "STARTUP",
    "Check",
    "HealthRegistry",
]

LIVENESS = "liveness"
"""The group Kubernetes' liveness probe asks: is this process alive? (no dependencies)"""
READINESS = "readiness"
"""The group load balancers and readiness probes ask: should this instance get traffic?"""
STARTUP = "startup"
"""The group the startup probe asks: has the warm-up finished?"""

Check: TypeAlias = Callable[[], Awaitable[CheckResult | None]]
"""A health check: an async callable returning ``None`` (pass) or a :class:`CheckResult`.

Raising any exception counts as a fail whose output is the (redacted) exception message.
"""

_log = get_logger(__name__)
_NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,200}$")
_MAX_OUTPUT = 1000


@dataclass(eq=False, slots=True)
class _Entry:
    name: str
    check: Check
    critical: bool
    timeout: float
    groups: frozenset[str]
    cache_for: float
    component_type: str | None
    cached: CheckOutcome | None = None
    fresh_until: float = -math.inf
    inflight: asyncio.Future[CheckOutcome] | None = None
    runs: int = 0
    last_status: Status | None = field(default=None)


class HealthRegistry:
    """Named health checks, grouped into probes, run concurrently with timeouts and a cache.

    ::

        registry = HealthRegistry()
        registry.add("redis:ping", redis_ping(client))
        registry.add("search:responseTime", check_search, critical=False)
        report = await registry.run("readiness")

    Every check of a group runs concurrently, each under its own timeout (capped by the
    registry's ``budget``), so one hung dependency yields ``fail: timed out after 1.0s`` and
    never a hung probe. A result is reused for ``cache_for`` seconds, and concurrent probes
    share one in-flight run (single flight): a storm of probes is never a storm of dependency
    queries. A failing non-critical check makes the status ``warn`` (degraded, still HTTP 200).

    The ``liveness`` group holds only an event-loop lag check by default: a dependency outage
    must never fail liveness (Kubernetes would restart every pod). ``readiness`` and
    ``startup`` fail until :meth:`mark_started` is called (the lifespan helpers call it);
    :meth:`begin_shutdown` makes ``readiness`` fail at once while liveness stays green.

    Args:
        budget: the most seconds any probe may take; caps every check's timeout.
        cache_for: the default seconds a check's result is reused (``add`` may override).
        started: start in the started state (no warm-up to wait for).
        event_loop_check: register the default ``eventloop:lag`` liveness check.
        clock: time source for caching and timeouts.

    Raises:
        ConfigurationError: ``budget`` is not positive or ``cache_for`` is negative.
    """

    def __init__(
        self,
        *,
        budget: float = 5.0,
        cache_for: float = 1.0,
        started: bool = False,
        event_loop_check: bool = True,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        _check_seconds("budget", budget, allow_zero=False)
        _check_seconds("cache_for", cache_for, allow_zero=True)
        self._budget = float(budget)
        self._cache_for = float(cache_for)
        self._clock = clock
        self._real_clock = isinstance(clock, SystemClock)
        self._entries: dict[str, _Entry] = {}
        self._groups: dict[str | None, tuple[_Entry, ...]] = {None: ()}
        self._last: dict[str | None, HealthReport] = {}
        self._gates: dict[str | None, HealthReport] = {}
        self._started = started
        self._shutting_down = False
        self._on_shutdown: list[Callable[[], None]] = []
        self._tracer = tracer()
        m = meter()
        self._duration = m.create_histogram(
            "scalekit.health.check.duration",
            unit="s",
            description="Duration of health check runs (cache hits excluded)",
        )
        self._runs = m.create_counter(
            "scalekit.health.check.runs", description="Health check runs by status"
        )
        if event_loop_check:
            self.add("eventloop:lag", event_loop_lag(), groups=(LIVENESS,))

    # -- registration ---------------------------------------------------------------------------

    def add(
        self,
        name: str,
        check: Check,
        *,
        critical: bool = True,
        timeout: float = 1.0,
        groups: Iterable[str] | str = (READINESS,),
        cache_for: float | None = None,
        component_type: str | None = None,
    ) -> None:
        """Register ``check`` under ``name``.

        Args:
            name: the response key, by convention ``"component:measurement"``
                (``"postgres:responseTime"``); unique in the registry.
            check: an async callable returning ``None`` (pass) or a :class:`CheckResult`.
            critical: when False, a fail of this check degrades the status to ``warn``.
            timeout: seconds the check may take before it counts as failed.
            groups: the probes this check belongs to (``"readiness"``, ``"liveness"``,
                ``"startup"`` or any custom name).
            cache_for: seconds a result is reused; ``None`` takes the registry default,
                ``0`` runs the check on every probe (concurrent probes still share a run).
            component_type: the draft's ``componentType`` (``"datastore"``, ``"component"``,
                ``"system"``); built-in checks set it themselves.

        Raises:
            TypeError: ``check`` is not callable or ``groups`` holds a non-string.
            ConfigurationError: the name is taken or malformed, or a duration is invalid.
        """
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigurationError(
                f"health check name must be 1-200 printable characters, got {name!r}"
            )
        if name in self._entries:
            raise ConfigurationError(
                f"a health check named {name!r} is already registered; pick another name "
                "or remove() the old one first"
            )
        if not callable(check):
            raise TypeError(f"check must be an async callable, got {type(check).__name__}")
        _check_seconds("timeout", timeout, allow_zero=False)
        if cache_for is not None:
            _check_seconds("cache_for", cache_for, allow_zero=True)
        group_set = frozenset([groups] if isinstance(groups, str) else groups)
        if not group_set:
            raise ConfigurationError(f"health check {name!r} needs at least one group")
        for group in group_set:
            if not isinstance(group, str) or not group:
                raise TypeError(f"groups must be non-empty strings, got {group!r}")
        if component_type is None:
            component_type = getattr(check, "component_type", None)
        self._entries[name] = _Entry(
            name=name,
            check=check,
            critical=bool(critical),
            timeout=float(timeout),
            groups=group_set,
            cache_for=self._cache_for if cache_for is None else float(cache_for),
            component_type=component_type,
        )
        self._reindex()

    def check(
        self,
        name: str,
        *,
        critical: bool = True,
        timeout: float = 1.0,
        groups: Iterable[str] | str = (READINESS,),
        cache_for: float | None = None,
        component_type: str | None = None,
    ) -> Callable[[Check], Check]:
        """Decorator form of :meth:`add`; returns the function unchanged.

        ::

            @registry.check("cache:warm", groups=("startup",))
            async def cache_warm() -> None: ...
        """

        def decorate(fn: Check) -> Check:
            self.add(
                name,
                fn,
                critical=critical,
                timeout=timeout,
                groups=groups,
                cache_for=cache_for,
                component_type=component_type,
            )
            return fn

        return decorate

    def remove(self, name: str) -> None:
        """Unregister the check ``name``.

        Raises:
            KeyError: no check has that name.
        """
        del self._entries[name]
        self._reindex()

    @property
    def names(self) -> tuple[str, ...]:
        """The registered check names, in registration order."""
        return tuple(self._entries)

    def groups(self) -> dict[str, tuple[str, ...]]:
        """Every group with the names of its checks (the three standard groups always)."""
        out: dict[str, tuple[str, ...]] = {LIVENESS: (), READINESS: (), STARTUP: ()}
        for group, entries in self._groups.items():
            if group is not None:
                out[group] = tuple(e.name for e in entries)
        return out

    def runs(self, name: str) -> int:
        """How many times the check ``name`` actually ran (cache hits and shared runs excluded)."""
        return self._entries[name].runs

    def invalidate(self, name: str | None = None) -> None:
        """Drop cached results (of one check, or all) so the next probe runs the checks."""
        for entry in self._entries.values() if name is None else (self._entries[name],):
            entry.fresh_until = -math.inf

    def _reindex(self) -> None:
        groups: dict[str | None, list[_Entry]] = {None: list(self._entries.values())}
        for entry in self._entries.values():
            for group in entry.groups:
                groups.setdefault(group, []).append(entry)
        self._groups = {g: tuple(es) for g, es in groups.items()}
        self._last.clear()

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        """Whether :meth:`mark_started` was called (or the registry was built started)."""
        return self._started

    @property
    def shutting_down(self) -> bool:
        """Whether :meth:`begin_shutdown` was called."""
        return self._shutting_down

    def mark_started(self) -> None:
        """Declare the warm-up done: ``startup`` and ``readiness`` now run their checks."""
        if not self._started:
            self._started = True
            self._last.clear()
            _log.info("health: startup complete")

    def begin_shutdown(self) -> None:
        """Make ``readiness`` fail at once (liveness stays green) so traffic drains away.

        Idempotent and safe to call from a signal handler (it only flips flags and calls the
        callbacks added with :meth:`on_shutdown`).
        """
        if self._shutting_down:
            return
        self._shutting_down = True
        self._last.clear()
        _log.info("health: shutdown began; readiness now fails so traffic drains")
        for callback in self._on_shutdown:
            try:
                callback()
            except Exception:
                _log.exception("health: an on_shutdown callback failed")

    def on_shutdown(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` (synchronously) when :meth:`begin_shutdown` first runs."""
        self._on_shutdown.append(callback)

    # -- background refresh -------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def refreshing(self, interval: float = 1.0) -> AsyncIterator[None]:
        """Keep results fresh in a background task, so probes are answered from the cache.

        Every ``interval`` seconds, each check whose cached result expires before the next
        tick is run (through the same single flight as probes). Give checks a ``cache_for``
        longer than ``interval`` and a probe never waits on a dependency::

            async with registry.refreshing(interval=2.0):
                ...  # serve

        Args:
            interval: seconds between refresh passes.

        Raises:
            ConfigurationError: ``interval`` is not positive.
        """
        _check_seconds("interval", interval, allow_zero=False)
        task = asyncio.get_running_loop().create_task(
            self._refresh_loop(float(interval)), name="scalekit.health.refresh"
        )
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _refresh_loop(self, interval: float) -> None:
        while True:
            horizon = self._clock.monotonic() + interval
            due = [e for e in self._entries.values() if e.fresh_until <= horizon]
            if due:
                await asyncio.gather(*(self._shared_run(e) for e in due))
            await self._clock.sleep(interval)

    # -- running --------------------------------------------------------------------------------

    async def run(self, group: str | None = READINESS) -> HealthReport:
        """Run (or reuse cached results of) the checks of ``group`` and aggregate them.

        Args:
            group: a group name, or ``None`` for every check (the ``/`` endpoint).

        Returns:
            The report: ``fail`` if a critical check failed, ``warn`` if any check warned or a
            non-critical check failed, else ``pass``. Readiness fails at once, without running
            checks, while shutting down; readiness and startup fail before :meth:`mark_started`.
            A group nobody registered a check in passes.
        """
        gate = self._gate(group)
        if gate is not None and group in (READINESS, STARTUP):
            return gate
        entries = self._groups.get(group, ())
        now = self._clock.monotonic()
        outcomes: list[CheckOutcome | None] = []
        pending: list[tuple[int, Awaitable[CheckOutcome]]] = []
        for i, entry in enumerate(entries):
            cached = entry.cached
            if cached is not None and now < entry.fresh_until:
                outcomes.append(cached)
            else:
                outcomes.append(None)
                pending.append((i, self._shared_run(entry)))
        if pending:
            results = await asyncio.gather(*(aw for _, aw in pending))
            for (i, _), outcome in zip(pending, results, strict=True):
                outcomes[i] = outcome
        checks = tuple(o for o in outcomes if o is not None)
        last = self._last.get(group)
        if (
            gate is None
            and last is not None
            and len(last.checks) == len(checks)
            and all(a is b for a, b in zip(last.checks, checks, strict=True))
        ):
            return last  # nothing changed: the renderer reuses its bytes for this object
        if gate is not None:  # the "all" view while shutting down or starting
            report = HealthReport(group, Status.FAIL, checks, gate.output)
        else:
            status = max((c.effective_status for c in checks), key=_severity, default=Status.PASS)
            report = HealthReport(group, status, checks)
            self._last[group] = report
        return report

    def _gate(self, group: str | None) -> HealthReport | None:
        if group not in (READINESS, STARTUP, None):
            return None
        if self._shutting_down and group != STARTUP:
            return self._gate_report(group, "shutting down: not accepting new traffic")
        if not self._started:
            return self._gate_report(
                group, "startup not complete: the application has not called mark_started()"
            )
        return None

    def _gate_report(self, group: str | None, output: str) -> HealthReport:
        last = self._gates.get(group)
        if last is None or last.output != output:
            last = self._gates[group] = HealthReport(group, Status.FAIL, (), output)
        return last

    async def _shared_run(self, entry: _Entry) -> CheckOutcome:
        # Single flight: every concurrent probe awaits the same run; shield() keeps a probe
        # whose client went away from cancelling the run the others are waiting for.
        future = entry.inflight
        if future is None or future.get_loop() is not asyncio.get_running_loop():
            future = entry.inflight = asyncio.ensure_future(self._execute(entry))
        return await asyncio.shield(future)

    async def _execute(self, entry: _Entry) -> CheckOutcome:
        clock = self._clock
        start = clock.monotonic()
        limit = min(entry.timeout, self._budget)
        task: asyncio.Future[Any] = asyncio.ensure_future(_call(entry.check))
        try:
            with self._tracer.start_as_current_span(
                "scalekit.health.check", attributes={"scalekit.health.check": entry.name}
            ) as span:
                await self._race(task, limit)
                duration = clock.monotonic() - start
                if task.done():
                    outcome = self._outcome(entry, task, duration)
                else:
                    # Never wait for a check that ignores its deadline: cancel it and move on.
                    task.cancel()
                    task.add_done_callback(_consume)
                    outcome = self._make(
                        entry,
                        CheckResult(Status.FAIL, output=f"timed out after {_fmt(limit)}s"),
                        duration,
                        error=CheckTimeoutError.__name__,
                    )
                if span.is_recording():
                    span.set_attribute("scalekit.health.status", outcome.status.value)
        except BaseException:
            task.cancel()
            task.add_done_callback(_consume)
            entry.inflight = None
            raise
        entry.runs += 1
        entry.cached = outcome
        entry.fresh_until = clock.monotonic() + entry.cache_for
        entry.inflight = None
        attrs = {
            "scalekit.health.check": entry.name,
            "scalekit.health.status": outcome.status.value,
        }
        self._duration.record(duration, attrs)
        self._runs.add(1, attrs)
        if outcome.status is not entry.last_status:
            level = 20 if outcome.status is Status.PASS else 30
            _log.log(
                level,
                "health check %s: %s%s",
                entry.name,
                outcome.status.value,
                f" ({outcome.output})" if outcome.output else "",
            )
            entry.last_status = outcome.status
        return outcome

    async def _race(self, task: asyncio.Future[Any], limit: float) -> None:
        """Return when ``task`` is done or ``limit`` seconds passed, whichever comes first."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()

        def wake(_: object = None) -> None:
            if not waiter.done():
                waiter.set_result(None)

        task.add_done_callback(wake)
        if self._real_clock:  # a timer handle is much cheaper than a sleeping task
            handle = loop.call_later(limit, wake)
            try:
                await waiter
            finally:
                handle.cancel()
                task.remove_done_callback(wake)
            return
        timer = asyncio.ensure_future(self._clock.sleep(limit))
        timer.add_done_callback(wake)
        try:
            await waiter
        finally:
            timer.cancel()
            task.remove_done_callback(wake)

    def _outcome(self, entry: _Entry, task: asyncio.Future[Any], duration: float) -> CheckOutcome:
        if task.cancelled():
            return self._make(
                entry, CheckResult(Status.FAIL, output="check was cancelled"), duration
            )
        exc = task.exception()
        if exc is not None:
            text = str(exc)
            message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
            return self._make(
                entry, CheckResult(Status.FAIL, output=message), duration, type(exc).__name__
            )
        result = task.result()
        if result is None:
            return self._make(
                entry, CheckResult(Status.PASS, round(duration * 1000, 3), "ms"), duration
            )
        if not isinstance(result, CheckResult):
            return self._make(
                entry,
                CheckResult(
                    Status.FAIL,
                    output=f"check returned {type(result).__name__}; return None or a CheckResult",
                ),
                duration,
                TypeError.__name__,
            )
        return self._make(entry, result, duration)

    def _make(
        self, entry: _Entry, result: CheckResult, duration: float, error: str | None = None
    ) -> CheckOutcome:
        output = result.output
        if output is not None:
            output = redact_text(output)
            if len(output) > _MAX_OUTPUT:
                output = output[: _MAX_OUTPUT - 3] + "..."
        status = result.status
        effective = Status.WARN if status is Status.FAIL and not entry.critical else status
        return CheckOutcome(
            name=entry.name,
            status=status,
            effective_status=effective,
            critical=entry.critical,
            observed_value=result.observed_value,
            observed_unit=result.observed_unit,
            output=output,
            component_type=result.component_type or entry.component_type,
            component_id=result.component_id,
            time=self._clock.time(),
            duration=duration,
            error=error,
        )

    def __repr__(self) -> str:
        state = (
            "shutting down" if self._shutting_down else "started" if self._started else "starting"
        )
        return f"HealthRegistry(checks={len(self._entries)}, {state})"


async def _call(check: Check) -> CheckResult | None:
    result: Any = check()
    if not inspect.isawaitable(result):
        raise TypeError(
            f"the check returned {type(result).__name__}, not an awaitable: "
            "define it with 'async def'"
        )
    value: CheckResult | None = await result
    return value


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # mark retrieved: a late failure of an abandoned check is not an error


def _severity(status: Status) -> int:
    return status.severity


def _fmt(seconds: float) -> str:
    return f"{seconds:g}" if seconds != int(seconds) else f"{seconds:.1f}"


def _check_seconds(name: str, value: float, *, allow_zero: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(
            f"{name} must be a finite number of seconds {bound}, got {value!r}"
        )
