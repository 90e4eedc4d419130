"""The policy-independent engine of every balancer: endpoint health, ejection, panic, slow start."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, Literal, TypeVar

from scalekit.clock import SYSTEM_CLOCK, Clock
from scalekit.errors import ConfigurationError, NoEndpointAvailableError

__all__ = ["Balancer", "EndpointSnapshot", "EndpointState", "Lease"]

T = TypeVar("T", bound=Hashable)

EndpointState = Literal["up", "warming", "ejected", "down"]


@dataclass(frozen=True, slots=True)
class EndpointSnapshot(Generic[T]):
    """One endpoint as the balancer sees it at one instant (for logs, metrics and tests).

    Attributes:
        endpoint: the endpoint itself.
        state: ``"up"``, ``"warming"`` (slow start), ``"ejected"`` (outlier) or ``"down"``.
        weight: the configured weight.
        effective_weight: the weight used now (lower while warming, 0 when unavailable).
        outstanding: calls started and not yet finished.
        latency_ewma: the peak-EWMA latency estimate in seconds (0.0 before any observation).
        consecutive_failures: failures since the last success.
        ejections: how many times in a row it was ejected (the ejection time grows with it).
        ejected_for: seconds of ejection left (0.0 when not ejected).
    """

    endpoint: T
    state: EndpointState
    weight: float
    effective_weight: float
    outstanding: int
    latency_ewma: float
    consecutive_failures: int
    ejections: int
    ejected_for: float


class _Node(Generic[T]):
    __slots__ = (
        "current",
        "down",
        "ejected_until",
        "ejections",
        "endpoint",
        "ewma",
        "ewma_at",
        "failures",
        "last_ejection_end",
        "outstanding",
        "warm_from",
        "weight",
    )

    def __init__(self, endpoint: T, weight: float, now: float) -> None:
        self.endpoint = endpoint
        self.weight = weight
        self.down = False
        self.ejected_until = -math.inf
        self.ejections = 0
        self.last_ejection_end = -math.inf
        self.failures = 0
        self.outstanding = 0
        self.ewma = 0.0
        self.ewma_at = now
        self.warm_from = -math.inf
        self.current = 0.0  # smooth weighted round-robin accumulator


class Lease(Generic[T]):
    """One call on one endpoint: counts as outstanding until released, then reports its outcome.

    Use it as a context manager (an exception counts as a failure) or call :meth:`release`::

        with balancer.lease() as lease:
            response = await client.get(f"{lease.endpoint}/items")
            if response.status_code >= 500:
                lease.release(success=False)

    Attributes:
        endpoint: the chosen endpoint.
    """

    __slots__ = ("_balancer", "_done", "_node", "_started", "endpoint")

    def __init__(self, balancer: Balancer[T], node: _Node[T], started: float) -> None:
        self._balancer = balancer
        self._node = node
        self._started = started
        self._done = False
        self.endpoint: T = node.endpoint

    def release(self, *, success: bool = True) -> None:
        """Finish the call: record its latency and outcome (idempotent: later calls do nothing).

        Args:
            success: ``False`` counts towards outlier ejection.
        """
        if self._done:
            return
        self._done = True
        node = self._node
        node.outstanding -= 1
        balancer = self._balancer
        now = balancer._clock.monotonic()
        balancer._record(node, now - self._started, success, now)

    def __enter__(self) -> Lease[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release(success=exc_type is None)


class Balancer(Generic[T]):
    """Client-side load balancing over a set of hashable endpoints; subclasses pick the policy.

    The engine is shared by every policy:

    * **Marked down / up**: :meth:`mark_down` takes an endpoint out (a failed health check),
      :meth:`mark_up` brings it back.
    * **Outlier ejection**: after ``failure_threshold`` consecutive failures an endpoint is ejected
      for ``ejection_time`` x the number of consecutive ejections (capped by
      ``max_ejection_time``); at most ``max_ejected_fraction`` of the endpoints (always at least
      one) are ejected at once. The count resets after ``max_ejection_time`` without ejection.
    * **Panic mode**: when fewer than ``panic_threshold`` of the endpoints are available, choose
      among *all* of them (down and ejected included) instead of overloading the few left.
      ``panic_threshold=0`` disables it.
    * **Slow start**: an endpoint coming back (marked up, or its ejection over) ramps its weight
      linearly from 10 % to 100 % over ``slow_start`` seconds.

    Nothing here awaits: choosing is synchronous and costs a few microseconds, so a check and the
    choice it guards cannot be separated by another task.

    Args:
        endpoints: the endpoints (URLs, host names, replica objects: anything hashable).
        weights: optional weight per endpoint (default 1.0; must be > 0).
        failure_threshold: consecutive failures that eject an endpoint (0 disables ejection).
        ejection_time: seconds of the first ejection; multiplied by the ejection count.
        max_ejection_time: cap on one ejection, in seconds.
        max_ejected_fraction: the largest share of endpoints ejected at once (at least one).
        panic_threshold: available share below which the balancer ignores health (0 disables).
        slow_start: seconds over which a returning endpoint ramps up to its full weight.
        decay_time: seconds over which latency observations lose weight (peak EWMA).
        clock: the time source (inject :class:`scalekit.testing.ManualClock` in tests).
        seed: seed for the random choices (for reproducible tests).

    Raises:
        ConfigurationError: an argument is out of range.
    """

    def __init__(
        self,
        endpoints: Iterable[T] = (),
        *,
        weights: Mapping[T, float] | None = None,
        failure_threshold: int = 5,
        ejection_time: float = 30.0,
        max_ejection_time: float = 300.0,
        max_ejected_fraction: float = 0.5,
        panic_threshold: float = 0.5,
        slow_start: float = 0.0,
        decay_time: float = 10.0,
        clock: Clock = SYSTEM_CLOCK,
        seed: int | None = None,
    ) -> None:
        if failure_threshold < 0:
            raise ConfigurationError("failure_threshold must be >= 0 (0 disables ejection)")
        if ejection_time < 0 or max_ejection_time < ejection_time:
            raise ConfigurationError("need 0 <= ejection_time <= max_ejection_time (seconds)")
        if not 0.0 <= max_ejected_fraction <= 1.0:
            raise ConfigurationError("max_ejected_fraction must be within [0, 1]")
        if not 0.0 <= panic_threshold <= 1.0:
            raise ConfigurationError("panic_threshold must be within [0, 1] (0 disables panic)")
        if slow_start < 0:
            raise ConfigurationError("slow_start must be >= 0 seconds")
        if decay_time <= 0:
            raise ConfigurationError("decay_time must be > 0 seconds")
        self._clock = clock
        self._failure_threshold = failure_threshold
        self._ejection_time = float(ejection_time)
        self._max_ejection_time = float(max_ejection_time)
        self._max_ejected_fraction = max_ejected_fraction
        self._panic_threshold = panic_threshold
        self._slow_start = float(slow_start)
        self._decay_time = float(decay_time)
        self._random = random.Random(seed).random
        self._nodes: dict[T, _Node[T]] = {}
        self._order: list[_Node[T]] = []
        # cached candidate list, valid until _valid_until or the next state change
        self._candidates: list[_Node[T]] = []
        self._valid_until = -math.inf
        self._warm_until = -math.inf
        self._panic = False
        self._cursor = 0
        weights = weights or {}
        now = clock.monotonic()
        for endpoint in endpoints:
            self._add(endpoint, weights.get(endpoint, 1.0), now)

    # -- membership ------------------------------------------------------------------------------

    def _add(self, endpoint: T, weight: float, now: float) -> None:
        if not isinstance(weight, (int, float)) or not weight > 0 or math.isinf(weight):
            raise ConfigurationError(f"the weight of {endpoint!r} must be a finite number > 0")
        if endpoint in self._nodes:
            raise ConfigurationError(f"endpoint {endpoint!r} is already in the balancer")
        node = _Node(endpoint, float(weight), now)
        self._nodes[endpoint] = node
        self._order.append(node)
        self._invalidate()

    def add(self, endpoint: T, *, weight: float = 1.0) -> None:
        """Add an endpoint (it starts warming when ``slow_start`` is set).

        Raises:
            ConfigurationError: it is already present or the weight is not > 0.
        """
        now = self._clock.monotonic()
        self._add(endpoint, weight, now)
        self._nodes[endpoint].warm_from = now

    def remove(self, endpoint: T) -> None:
        """Remove an endpoint; leases already handed out on it can still be released.

        Raises:
            KeyError: the endpoint is unknown.
        """
        node = self._node(endpoint)
        del self._nodes[endpoint]
        self._order.remove(node)
        self._invalidate()

    @property
    def endpoints(self) -> tuple[T, ...]:
        """Every endpoint, in insertion order, whatever its state."""
        return tuple(node.endpoint for node in self._order)

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, endpoint: object) -> bool:
        return endpoint in self._nodes

    def _node(self, endpoint: T) -> _Node[T]:
        try:
            return self._nodes[endpoint]
        except KeyError:
            raise KeyError(f"{endpoint!r} is not an endpoint of this balancer") from None

    # -- health ----------------------------------------------------------------------------------

    def mark_down(self, endpoint: T) -> None:
        """Take an endpoint out of rotation until :meth:`mark_up` (e.g. a failed health check)."""
        node = self._node(endpoint)
        if not node.down:
            node.down = True
            self._invalidate()

    def mark_up(self, endpoint: T) -> None:
        """Put an endpoint marked down back into rotation (it warms up when ``slow_start`` > 0)."""
        node = self._node(endpoint)
        if node.down:
            node.down = False
            node.failures = 0
            node.warm_from = self._clock.monotonic()
            self._invalidate()

    def is_available(self, endpoint: T) -> bool:
        """Whether the endpoint is neither marked down nor ejected now."""
        node = self._node(endpoint)
        return not node.down and node.ejected_until <= self._clock.monotonic()

    @property
    def panicking(self) -> bool:
        """Whether too few endpoints are available and the balancer chooses among all of them."""
        self._refresh(self._clock.monotonic())
        return self._panic

    def observe(self, endpoint: T, *, latency: float | None = None, success: bool = True) -> None:
        """Report the outcome of a call made without a :class:`Lease`.

        Args:
            endpoint: the endpoint that served (or failed) the call.
            latency: its duration in seconds, if known.
            success: ``False`` counts towards outlier ejection.
        """
        node = self._nodes.get(endpoint)
        if node is not None:
            self._record(node, latency, success, self._clock.monotonic())

    def _record(self, node: _Node[T], latency: float | None, success: bool, now: float) -> None:
        if latency is not None and latency >= 0:
            # peak EWMA: jump up to a slow observation at once, decay down towards fast ones
            if latency >= node.ewma:
                node.ewma = latency
            else:
                w = math.exp((node.ewma_at - now) / self._decay_time)
                node.ewma = node.ewma * w + latency * (1.0 - w)
            node.ewma_at = now
        if success:
            node.failures = 0
            return
        node.failures += 1
        if (
            self._failure_threshold
            and node.failures >= self._failure_threshold
            and node.ejected_until <= now
            and not node.down
            and self._may_eject(now)
        ):
            if now - node.last_ejection_end > self._max_ejection_time:
                node.ejections = 0
            node.ejections += 1
            duration = min(self._ejection_time * node.ejections, self._max_ejection_time)
            node.ejected_until = now + duration
            node.last_ejection_end = node.ejected_until
            node.warm_from = node.ejected_until
            node.failures = 0
            self._invalidate()

    def _may_eject(self, now: float) -> bool:
        ejected = sum(1 for n in self._order if n.ejected_until > now)
        allowed = max(1, math.floor(self._max_ejected_fraction * len(self._order)))
        return ejected < allowed

    # -- choice ----------------------------------------------------------------------------------

    def _invalidate(self) -> None:
        self._valid_until = -math.inf

    def _refresh(self, now: float) -> list[_Node[T]]:
        if now < self._valid_until:
            return self._candidates
        valid_until = math.inf
        warm_until = -math.inf
        available: list[_Node[T]] = []
        for node in self._order:
            if node.down:
                continue
            if node.ejected_until > now:
                valid_until = min(valid_until, node.ejected_until)
                continue
            available.append(node)
            if self._slow_start:
                warm_until = max(warm_until, node.warm_from + self._slow_start)
        total = len(self._order)
        self._panic = bool(total) and len(available) < self._panic_threshold * total
        self._candidates = list(self._order) if self._panic else available
        self._valid_until = valid_until
        self._warm_until = warm_until
        return self._candidates

    def _weight(self, node: _Node[T], now: float) -> float:
        if now < self._warm_until:
            warmed = (now - node.warm_from) / self._slow_start
            if warmed < 1.0:
                return node.weight * max(0.1, warmed)
        return node.weight

    def _pick(self, candidates: list[_Node[T]], now: float) -> _Node[T]:
        raise NotImplementedError

    def _choose_node(self, accept: Callable[[T], bool] | None, now: float) -> _Node[T] | None:
        candidates = self._refresh(now)
        if accept is not None:
            candidates = [n for n in candidates if accept(n.endpoint)]
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        return self._pick(candidates, now)

    def try_choose(self, accept: Callable[[T], bool] | None = None) -> T | None:
        """Choose an endpoint, or return ``None`` when none is available.

        Args:
            accept: an optional filter; only endpoints for which it returns true are considered.
                It runs synchronously with the choice, so the check cannot go stale before it.
        """
        node = self._choose_node(accept, self._clock.monotonic())
        return None if node is None else node.endpoint

    def choose(self, accept: Callable[[T], bool] | None = None) -> T:
        """Choose an endpoint.

        Args:
            accept: an optional filter (see :meth:`try_choose`).

        Raises:
            NoEndpointAvailableError: every endpoint is down, ejected or refused by ``accept``.
        """
        node = self._choose_node(accept, self._clock.monotonic())
        if node is None:
            raise NoEndpointAvailableError(self._none_message())
        return node.endpoint

    def lease(self, accept: Callable[[T], bool] | None = None) -> Lease[T]:
        """Choose an endpoint and count the call as outstanding on it until the lease is released.

        Args:
            accept: an optional filter (see :meth:`try_choose`).

        Raises:
            NoEndpointAvailableError: no endpoint is available.
        """
        now = self._clock.monotonic()
        node = self._choose_node(accept, now)
        if node is None:
            raise NoEndpointAvailableError(self._none_message())
        node.outstanding += 1
        return Lease(self, node, now)

    def lease_on(self, endpoint: T) -> Lease[T]:
        """A lease on an endpoint chosen by the caller (e.g. a retry pinned to one endpoint).

        Raises:
            KeyError: the endpoint is unknown.
        """
        node = self._node(endpoint)
        node.outstanding += 1
        return Lease(self, node, self._clock.monotonic())

    def _finish(self, node: _Node[T], started: float, now: float, success: bool) -> None:
        """Internal: end a call counted on ``node`` without a :class:`Lease` object.

        For callers on a hot path (``scalekit.db``) that incremented ``node.outstanding``
        themselves after :meth:`_choose_node`; equivalent to releasing a lease started at
        ``started``.
        """
        node.outstanding -= 1
        latency = now - started
        if not success or latency < 0:
            self._record(node, latency, success, now)
            return
        # the success case of _record, inlined
        ewma = node.ewma
        if latency >= ewma:
            node.ewma = latency
        else:
            w = math.exp((node.ewma_at - now) / self._decay_time)
            node.ewma = ewma * w + latency * (1.0 - w)
        node.ewma_at = now
        node.failures = 0

    def _choose_any(self, now: float) -> _Node[T] | None:
        """Internal: :meth:`_choose_node` without a filter, one call shorter (a hot path)."""
        candidates = self._candidates if now < self._valid_until else self._refresh(now)
        if len(candidates) == 1:
            return candidates[0]
        if not candidates:
            return None
        return self._pick(candidates, now)

    def _none_message(self) -> str:
        if not self._order:
            return f"{type(self).__name__} has no endpoints; add some with add()."
        return (
            f"none of the {len(self._order)} endpoints of {type(self).__name__} is available "
            "(all are marked down, ejected, or refused by the filter); retry later or fall back."
        )

    def snapshot(self) -> tuple[EndpointSnapshot[T], ...]:
        """The state of every endpoint now, in insertion order."""
        now = self._clock.monotonic()
        self._refresh(now)
        out = []
        for node in self._order:
            state: EndpointState
            if node.down:
                state = "down"
            elif node.ejected_until > now:
                state = "ejected"
            elif self._slow_start and now - node.warm_from < self._slow_start:
                state = "warming"
            else:
                state = "up"
            available = state in ("up", "warming")
            out.append(
                EndpointSnapshot(
                    endpoint=node.endpoint,
                    state=state,
                    weight=node.weight,
                    effective_weight=self._weight(node, now) if available else 0.0,
                    outstanding=node.outstanding,
                    latency_ewma=node.ewma,
                    consecutive_failures=node.failures,
                    ejections=node.ejections,
                    ejected_for=max(0.0, node.ejected_until - now),
                )
            )
        return tuple(out)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(endpoints={len(self._order)})"
