"""Shared breaker state: every process using a breaker name trips and recovers together.

The design is *hybrid*, as Resilience4j's maintainers suggested when they declined a per-call
shared window (resilience4j#1284, "performance implication per request would be too high"):

* the failure and slow-call windows stay **local** to each process, so the closed-state hot path
  makes no network call;
* the **state** is shared: when any process trips, it writes ``open`` with an open-until instant
  taken from the store's own clock; every other process learns it within ``sync_interval``
  (a background read, at most one per interval per breaker) and opens too, with the same end;
* **half-open is gated globally**: trial permits are handed out by the store, so
  ``half_open_max_calls`` trials run across all processes, and the store decides from their
  outcomes whether everyone closes or re-opens. A permit holder that dies is covered by a lease.

Round trips per call: closed 0 (plus one background read per ``sync_interval``); open 0 (plus
the same background read); half-open trial 2 (acquire a permit, report the outcome); a trip 1
(background). When the store fails or times out, the breaker logs it once, counts it in the
``scalekit.resilience.breaker.store_errors`` metric and keeps working on local state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from scalekit.clock import SYSTEM_CLOCK, Clock
from scalekit.errors import ConfigurationError

__all__ = ["BreakerStore", "InMemoryBreakerStore", "SharedState"]


@dataclass(frozen=True, slots=True)
class SharedState:
    """The shared state of one breaker name, as the store answered it.

    Attributes:
        state: ``"closed"``, ``"open"`` or ``"half_open"``.
        remaining: seconds until open time (or a half-open lease) ends, per the store's clock.
        generation: bumped by the store on every shared transition.
        admitted: for :meth:`BreakerStore.acquire_trial`, whether a trial permit was granted.
    """

    state: str
    remaining: float
    generation: int
    admitted: bool = False


class BreakerStore(Protocol):
    """Where breakers of the same name share their state (see the module docs for the design).

    Attributes:
        sync_interval: seconds between background reads of the shared state per breaker.
        timeout: seconds a store operation may take before the breaker uses local state.
    """

    sync_interval: float
    timeout: float

    async def read(self, name: str) -> SharedState:
        """The current shared state."""
        ...

    async def trip(self, name: str, open_seconds: float) -> SharedState:
        """Open for ``open_seconds`` unless already open (then keep the existing end)."""
        ...

    async def acquire_trial(self, name: str, max_calls: int, lease_seconds: float) -> SharedState:
        """Take one half-open trial permit if open time is over and permits are left."""
        ...

    async def release_trial(self, name: str) -> SharedState:
        """Give back a permit whose call was cancelled or ignored."""
        ...

    async def report_trial(
        self,
        name: str,
        *,
        generation: int,
        failed: bool,
        slow: bool,
        max_calls: int,
        failure_rate_threshold: float,
        slow_call_rate_threshold: float,
        open_seconds: float,
    ) -> SharedState:
        """Record a trial outcome; after ``max_calls`` outcomes, close or re-open for everyone."""
        ...

    async def reset(self, name: str) -> SharedState:
        """Close the breaker for everyone."""
        ...


def _check(sync_interval: float, timeout: float) -> None:
    if not isinstance(sync_interval, (int, float)) or not sync_interval > 0:
        raise ConfigurationError(f"sync_interval={sync_interval!r}: must be seconds > 0")
    if not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ConfigurationError(f"timeout={timeout!r}: must be seconds > 0")


class _Entry:
    __slots__ = ("calls", "failures", "generation", "permits", "slow", "state", "until")

    def __init__(self) -> None:
        self.state = "closed"
        self.until = 0.0
        self.generation = 0
        self.permits = 0
        self.calls = 0
        self.failures = 0
        self.slow = 0


class InMemoryBreakerStore:
    """A :class:`BreakerStore` in this process, with the same rules as the Redis one.

    Share one instance between breakers to test shared-state behaviour without a server.

    Args:
        sync_interval: seconds between background reads per breaker.
        timeout: seconds an operation may take (irrelevant in memory; kept for the protocol).
        clock: the store's clock (the "server clock").
    """

    def __init__(
        self, *, sync_interval: float = 0.5, timeout: float = 0.25, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        _check(sync_interval, timeout)
        self.sync_interval = float(sync_interval)
        self.timeout = float(timeout)
        self.clock = clock
        self._entries: dict[str, _Entry] = {}

    def _get(self, name: str) -> _Entry:
        entry = self._entries.get(name)
        if entry is None:
            entry = self._entries[name] = _Entry()
        return entry

    def _state(self, e: _Entry, admitted: bool = False) -> SharedState:
        remaining = max(0.0, e.until - self.clock.monotonic()) if e.state != "closed" else 0.0
        return SharedState(e.state, remaining, e.generation, admitted)

    async def read(self, name: str) -> SharedState:
        """See :meth:`BreakerStore.read`."""
        return self._state(self._get(name))

    async def trip(self, name: str, open_seconds: float) -> SharedState:
        """See :meth:`BreakerStore.trip`."""
        e = self._get(name)
        now = self.clock.monotonic()
        if not (e.state == "open" and e.until > now):
            e.state, e.until = "open", now + open_seconds
            e.generation += 1
        return self._state(e)

    async def acquire_trial(self, name: str, max_calls: int, lease_seconds: float) -> SharedState:
        """See :meth:`BreakerStore.acquire_trial`."""
        e = self._get(name)
        now = self.clock.monotonic()
        if e.state == "closed" or (e.state == "open" and now < e.until):
            return self._state(e)
        if e.state == "open" or now >= e.until:  # open time over, or a stale half-open lease
            e.state, e.until = "half_open", now + lease_seconds
            e.generation += 1
            e.permits = max_calls - 1
            e.calls = e.failures = e.slow = 0
            return self._state(e, True)
        if e.permits > 0:
            e.permits -= 1
            return self._state(e, True)
        return self._state(e)

    async def release_trial(self, name: str) -> SharedState:
        """See :meth:`BreakerStore.release_trial`."""
        e = self._get(name)
        if e.state == "half_open":
            e.permits += 1
        return self._state(e)

    async def report_trial(
        self,
        name: str,
        *,
        generation: int,
        failed: bool,
        slow: bool,
        max_calls: int,
        failure_rate_threshold: float,
        slow_call_rate_threshold: float,
        open_seconds: float,
    ) -> SharedState:
        """See :meth:`BreakerStore.report_trial`."""
        e = self._get(name)
        if e.state != "half_open" or e.generation != generation:
            return self._state(e)
        e.calls += 1
        e.failures += int(failed)
        e.slow += int(slow)
        if e.calls >= max_calls:
            bad = (e.failures and e.failures >= failure_rate_threshold * e.calls) or (
                e.slow and e.slow >= slow_call_rate_threshold * e.calls
            )
            e.generation += 1
            if bad:
                e.state, e.until = "open", self.clock.monotonic() + open_seconds
            else:
                e.state, e.until = "closed", 0.0
        return self._state(e)

    async def reset(self, name: str) -> SharedState:
        """See :meth:`BreakerStore.reset`."""
        e = self._get(name)
        e.state, e.until = "closed", 0.0
        e.generation += 1
        return self._state(e)
