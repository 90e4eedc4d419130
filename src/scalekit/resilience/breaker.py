"""The circuit breaker: stop calling a failing dependency at once, then probe it carefully.

States and transitions::

    CLOSED --(failure or slow-call rate >= threshold over >= minimum_calls)--> OPEN
    OPEN --(open_duration elapsed)--> HALF_OPEN
    HALF_OPEN --(half_open_max_calls trials done, rates below thresholds)--> CLOSED
    HALF_OPEN --(rates at or above thresholds)--> OPEN (open_duration * open_backoff**n)
    any --force_open()--> FORCED_OPEN;  any --disable()--> DISABLED;  any --reset()--> CLOSED

The closed-state hot path takes no lock and allocates nothing: with no slow-call tracking, no
result predicate and no shared store, a successful call costs one attribute read to admit it and
one integer increment to count it (a :class:`CountWindow` once it holds ``minimum_calls``; a
:class:`TimeWindow` adds one clock read). ``@breaker`` compiles a wrapper with the function's own
parameters (no argument repacking), and ``async with`` returns completed futures from plain
methods and takes no per-task ticket unless a straggler or a ticketed entry of the breaker is in
flight. Outcomes of calls admitted before a transition are discarded (each call is tied to the
window, or generation, it was admitted under), so a slow straggler from the closed state never
decides a half-open trial.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import functools
import keyword
import time
import types
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from opentelemetry.trace import get_current_span

from scalekit._telemetry import get_logger, meter
from scalekit.clock import SYSTEM_CLOCK, Clock, SystemClock
from scalekit.errors import CircuitOpenError, ConfigurationError
from scalekit.resilience._types import NEVER_COUNTED, ExceptionMatcher, matcher
from scalekit.resilience._windows import (
    FAILURE,
    SLOW,
    CountWindow,
    TimeWindow,
    Window,
    _CountRecorder,
    make_recorder,
)

if TYPE_CHECKING:
    from scalekit.resilience.store import BreakerStore, SharedState

__all__ = [
    "BreakerSnapshot",
    "BreakerState",
    "CircuitBreaker",
    "StateChange",
]

P = ParamSpec("P")
T = TypeVar("T")

_log = get_logger("scalekit.resilience")


class BreakerState(enum.Enum):
    """The state of a :class:`CircuitBreaker`."""

    CLOSED = "closed"
    """Calls go through; outcomes are recorded in the window."""
    OPEN = "open"
    """Calls are rejected with :class:`~scalekit.errors.CircuitOpenError` until open time ends."""
    HALF_OPEN = "half_open"
    """Exactly ``half_open_max_calls`` trial calls are admitted; the rest are rejected."""
    FORCED_OPEN = "forced_open"
    """An operator opened the breaker; it stays open until :meth:`CircuitBreaker.reset`."""
    DISABLED = "disabled"
    """An operator disabled the breaker; every call goes through and nothing is recorded."""


_GAUGE_VALUE = {
    BreakerState.CLOSED: 0,
    BreakerState.OPEN: 1,
    BreakerState.HALF_OPEN: 2,
    BreakerState.FORCED_OPEN: 3,
    BreakerState.DISABLED: 4,
}


@dataclass(frozen=True, slots=True)
class StateChange:
    """A transition, passed to every listener added with :meth:`CircuitBreaker.add_listener`.

    Attributes:
        name: the breaker's name.
        previous: the state left.
        current: the state entered.
        reason: why, in words (``"failure rate 0.60 >= 0.50 over 20 calls"``).
        at: wall-clock time of the change (``clock.time()``).
    """

    name: str
    previous: BreakerState
    current: BreakerState
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """A consistent view of a breaker, cheap enough to log or assert on.

    Attributes:
        name: the breaker's name.
        state: the current state.
        calls: calls in the window (closed state) or trial calls completed (half-open).
        failures: failures among them.
        slow_calls: slow calls among them (successful or not).
        failure_rate: ``failures / calls`` (0.0 with no calls).
        slow_call_rate: ``slow_calls / calls`` (0.0 with no calls).
        open_remaining: seconds until an open breaker admits trials (0.0 otherwise).
        half_open_permits: trial permits not yet handed out (half-open only, else 0).
        total_calls: calls whose outcome was recorded since construction.
        total_failures: failures recorded since construction.
        total_rejected: calls rejected since construction.
        store_healthy: whether the shared store answered last time (``True`` without a store).
    """

    name: str
    state: BreakerState
    calls: int
    failures: int
    slow_calls: int
    failure_rate: float
    slow_call_rate: float
    open_remaining: float
    half_open_permits: int
    total_calls: int
    total_failures: int
    total_rejected: int
    store_healthy: bool


# -- metrics: created once, on the first breaker, read by callbacks (zero hot-path cost) ------

_BREAKERS: weakref.WeakSet[CircuitBreaker] = weakref.WeakSet()
_instruments: Any = None


def _observe_calls(options: Any) -> Iterable[Any]:
    from opentelemetry.metrics import Observation

    for b in list(_BREAKERS):
        successes = b._rec.seq - b._n_closed_failures + b._n_trial_success + b._n_passthrough
        for outcome, value in (
            ("success", successes),
            ("failure", b._n_closed_failures + b._n_trial_failure),
            ("ignored", b._n_ignored),
            ("rejected", b._n_rejected),
        ):
            yield Observation(value, {"scalekit.breaker.name": b.name, "outcome": outcome})


def _observe_state(options: Any) -> Iterable[Any]:
    from opentelemetry.metrics import Observation

    for b in list(_BREAKERS):
        yield Observation(_GAUGE_VALUE[b._state], {"scalekit.breaker.name": b.name})


def _ensure_instruments() -> Any:
    global _instruments
    if _instruments is None:
        m = meter()
        m.create_observable_counter(
            "scalekit.resilience.breaker.calls",
            callbacks=[_observe_calls],
            unit="{call}",
            description="Calls seen by circuit breakers, by outcome",
        )
        m.create_observable_gauge(
            "scalekit.resilience.breaker.state",
            callbacks=[_observe_state],
            description="0 closed, 1 open, 2 half-open, 3 forced open, 4 disabled",
        )
        transitions = m.create_counter(
            "scalekit.resilience.breaker.transitions",
            unit="{transition}",
            description="Circuit breaker state changes",
        )
        store_errors = m.create_counter(
            "scalekit.resilience.breaker.store_errors",
            unit="{error}",
            description="Shared breaker store failures (the breaker fell back to local state)",
        )
        _instruments = (transitions, store_errors)
    return _instruments


# -- async with: the per-task admission ticket ---------------------------------------------------


# A ticket is a list, [breaker, window, generation, kind, start, previous ticket]: building a
# list literal costs a third of calling a class. Only entries that need one take a ticket (see
# __aenter__), setting the context variable once; the exit marks the ticket closed (breaker slot
# set to None) instead of popping it, and later entries in the task skip closed tickets.
_TICKETS: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar(
    "scalekit_breaker_tickets", default=None
)
_get_ticket = _TICKETS.get
_set_ticket = _TICKETS.set


# -- @breaker: a wrapper with the decorated function's own parameters ---------------------------

# Forwarding `*args, **kwargs` costs a tuple, two dicts and a generic call on every call (about
# a third of the wrapper's cost over a bare await); a wrapper compiled with the function's own
# parameter list passes them straight through. Defaults are the function's own objects.
_GUARD_SOURCE = """
def _sk_make(_sk_fn, _sk_breaker, _sk_OPEN, _sk_KIND_CLOSED{defaults}):
    async def {name}({params}):
        _sk_rec = _sk_breaker._fast_rec
        if _sk_rec is not None:
            try:
                _sk_result = await {call}
            except BaseException as _sk_exc:
                _sk_breaker._on_exception(
                    _sk_exc, _sk_breaker._gen if _sk_rec is _sk_breaker._fast_rec else -1, 0, 0.0
                )
                raise
            _sk_rec.seq += 1
            return _sk_result
        _sk_rec = _sk_breaker._fast_time
        if _sk_rec is not None:
            try:
                _sk_result = await {call}
            except BaseException as _sk_exc:
                _sk_breaker._on_exception(
                    _sk_exc, _sk_breaker._gen if _sk_rec is _sk_breaker._fast_time else -1, 0, 0.0
                )
                raise
            _sk_now = _sk_breaker._now()
            if _sk_now < _sk_rec.end:
                _sk_rec.fresh_successes += 1
                if _sk_rec.failures and _sk_rec is _sk_breaker._fast_time:
                    _sk_breaker._evaluate_closed(_sk_now)
            elif _sk_rec is _sk_breaker._fast_time:
                _sk_breaker._record_outcome(0, _sk_breaker._gen, _sk_KIND_CLOSED)
            return _sk_result
        if _sk_breaker._state is _sk_OPEN and _sk_breaker.store is None:
            _sk_now = _sk_breaker._now()
            if _sk_now < _sk_breaker._open_until:
                raise _sk_breaker._reject(_sk_breaker._open_until - _sk_now)
        return await _sk_breaker._call_slow(_sk_fn, {args}, {kwargs})
    return {name}
"""

_CO_VARARGS = 0x04
_CO_VARKEYWORDS = 0x08
_TEMPLATE_NAMES = frozenset({"BaseException"})  # builtins the template uses: never shadowed


@functools.lru_cache(maxsize=512)
def _guard_factory(source: str) -> Callable[..., Any]:
    """Compile a wrapper source once per parameter shape (decorating costs microseconds)."""
    namespace: dict[str, Any] = {}
    exec(compile(source, "<scalekit circuit breaker wrapper>", "exec"), namespace)
    factory: Callable[..., Any] = namespace["_sk_make"]
    return factory


def _parameters(fn: Any) -> tuple[str, str, str, str, list[Any]] | None:
    """``(params, call, args, kwargs, defaults)`` source for ``fn``'s own parameter list.

    Read from the code object (what the interpreter binds), not ``inspect.signature`` (which
    believes ``__signature__`` and ``__wrapped__``); ``None`` for anything but a plain function.
    """
    if type(fn) is not types.FunctionType:
        return None
    code = fn.__code__
    names = code.co_varnames
    n_pos, n_posonly, n_kwonly = code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount
    positional = list(names[:n_pos])
    kwonly = list(names[n_pos : n_pos + n_kwonly])
    i = n_pos + n_kwonly
    varargs = names[i] if code.co_flags & _CO_VARARGS else None
    i += varargs is not None
    varkw = names[i] if code.co_flags & _CO_VARKEYWORDS else None
    every = [*positional, *kwonly, varargs or "", varkw or ""]
    if any(
        name.startswith("_sk_")
        or name in _TEMPLATE_NAMES
        or not name.isidentifier()
        or keyword.iskeyword(name)
        for name in every
        if name
    ):
        return None
    pos_defaults = fn.__defaults__ or ()
    kw_defaults = fn.__kwdefaults__ or {}
    defaults: list[Any] = []

    def default(name: str, value: Any) -> str:
        defaults.append(value)
        return f"{name}=_sk_d{len(defaults) - 1}"

    params: list[str] = []
    first_default = n_pos - len(pos_defaults)
    for index, name in enumerate(positional):
        has = index >= first_default
        params.append(default(name, pos_defaults[index - first_default]) if has else name)
        if index == n_posonly - 1:
            params.append("/")
    if varargs is not None:
        params.append(f"*{varargs}")
    elif kwonly:
        params.append("*")
    params += [default(name, kw_defaults[name]) if name in kw_defaults else name for name in kwonly]
    if varkw is not None:
        params.append(f"**{varkw}")
    pos_args = positional + ([f"*{varargs}"] if varargs is not None else [])
    kw_args = [f"{name}={name}" for name in kwonly] + ([f"**{varkw}"] if varkw else [])
    call = f"_sk_fn({', '.join(pos_args + kw_args)})"
    args = f"({', '.join(pos_args)},)" if pos_args else "()"
    kwargs_items = [f"{name!r}: {name}" for name in kwonly] + ([f"**{varkw}"] if varkw else [])
    return ", ".join(params), call, args, "{" + ", ".join(kwargs_items) + "}", defaults


def _guard(breaker: CircuitBreaker, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """The ``@breaker`` wrapper of ``fn``: the fast paths of :meth:`CircuitBreaker.call`,
    inlined (one coroutine frame per call, not two) and without argument repacking."""
    shape = _parameters(fn)
    if shape is None:  # a callable object, a partial...: forward *args, **kwargs
        shape = (
            "*_sk_args, **_sk_kwargs",
            "(_sk_fn(*_sk_args, **_sk_kwargs) if _sk_kwargs else _sk_fn(*_sk_args))",
            "_sk_args",
            "_sk_kwargs",
            [],
        )
    params, call, args, kwargs, defaults = shape
    source = _GUARD_SOURCE.format(
        name="guarded",
        params=params,
        call=call,
        args=args,
        kwargs=kwargs,
        defaults="".join(f", _sk_d{i}" for i in range(len(defaults))),
    )
    guarded = _guard_factory(source)(fn, breaker, BreakerState.OPEN, _KIND_CLOSED, *defaults)
    code = guarded.__code__
    name = getattr(fn, "__name__", code.co_name)
    qualname = getattr(fn, "__qualname__", name)
    if isinstance(name, str) and isinstance(qualname, str):
        guarded.__code__ = code.replace(co_name=name, co_qualname=qualname)
    return functools.wraps(fn)(guarded)


class _NoLoop:
    """Stands in for an event loop for futures completed at creation (they never use it)."""

    def get_debug(self) -> bool:
        return False


def _done(value: Any) -> asyncio.Future[Any]:
    future: asyncio.Future[Any] = asyncio.Future(loop=_NoLoop())  # type: ignore[arg-type]
    future.set_result(value)
    return future


_DONE: asyncio.Future[None] = _done(None)

_KIND_CLOSED = 0
_KIND_TRIAL = 1
_KIND_PASS = 2
_KIND_SHARED_TRIAL = 3


class CircuitBreaker:
    """A circuit breaker with count or time windows, slow-call detection and gated half-open.

    Use it as ``async with breaker:``, ``await breaker.call(fn, *args, **kwargs)`` or ``@breaker``
    on an async function (its signature and types are preserved)::

        breaker = CircuitBreaker("payments", failure_rate_threshold=0.5, minimum_calls=20)

        @breaker
        async def charge(order_id: str) -> Receipt: ...

    Args:
        name: identifies the breaker in errors, logs, metrics and the shared store.
        failure_rate_threshold: open when ``failures / calls`` reaches this (0 < x <= 1).
        slow_call_rate_threshold: open when ``slow_calls / calls`` reaches this (0 < x <= 1).
        slow_call_duration: seconds after which a call counts as slow, even if it succeeds;
            ``None`` disables slow-call tracking (and its two clock reads per call).
        window: :class:`CountWindow` (last N calls) or :class:`TimeWindow` (last N seconds).
        minimum_calls: calls the window must hold before the rates can open the breaker
            (capped at a count window's size).
        open_duration: seconds the breaker stays open before admitting trial calls. When the
            failure that opens it carries a longer ``retry_after`` (a server's Retry-After, or
            a downstream breaker's), that is used instead, capped by ``max_open_duration``
            (default cap: ten times ``open_duration``).
        half_open_max_calls: trial calls admitted in half-open, however many callers race;
            their outcomes decide between closing and re-opening.
        half_open_max_wait: seconds after which a half-open breaker whose trials have not all
            finished re-opens (a hung trial cannot keep it half-open); ``None``: no limit.
        record: which exceptions count as failures (types or a predicate); other exceptions
            count as successes, as in Resilience4j. Default: every :class:`Exception`.
        ignore: exceptions that count as neither (e.g. HTTP 4xx); checked before ``record``.
        record_result: a predicate on the return value; ``True`` counts the call as a failure
            (e.g. ``lambda r: r.status_code >= 500``).
        open_backoff: factor applied to ``open_duration`` each time a half-open trial re-opens
            the breaker (1.0 = constant); reset when it closes.
        max_open_duration: cap for the backed-off open duration.
        clock: the time source (use :class:`scalekit.testing.ManualClock` in tests).
        store: a shared store (:class:`~scalekit.resilience.RedisBreakerStore`) so every process
            using this name trips and recovers together; ``None`` keeps the state local.

    Raises:
        ConfigurationError: an argument is out of range or of the wrong type.
    """

    __slots__ = (
        "__weakref__",
        "_consecutive_opens",
        "_entered",
        "_fast_rec",
        "_fast_time",
        "_gen",
        "_half_open_since",
        "_ignore",
        "_instruments",
        "_listeners",
        "_n_closed_failures",
        "_n_ignored",
        "_n_passthrough",
        "_n_rejected",
        "_n_trial_failure",
        "_n_trial_success",
        "_next_sync",
        "_now",
        "_open_until",
        "_pending_shared",
        "_rec",
        "_record",
        "_record_result",
        "_retry_after_hint",
        "_shared_gen",
        "_stale_with",
        "_state",
        "_store_healthy",
        "_tasks",
        "_ticketed_open",
        "_trial_calls",
        "_trial_failures",
        "_trial_permits",
        "_trial_slow",
        "_trip_publishing",
        "_with_inflight",
        "clock",
        "failure_rate_threshold",
        "half_open_max_calls",
        "half_open_max_wait",
        "max_open_duration",
        "minimum_calls",
        "name",
        "open_backoff",
        "open_duration",
        "slow_call_duration",
        "slow_call_rate_threshold",
        "store",
        "window",
    )

    def __init__(
        self,
        name: str,
        *,
        failure_rate_threshold: float = 0.5,
        slow_call_rate_threshold: float = 1.0,
        slow_call_duration: float | None = None,
        window: Window = CountWindow(100),  # noqa: B008 - frozen, immutable
        minimum_calls: int = 20,
        open_duration: float = 30.0,
        half_open_max_calls: int = 5,
        half_open_max_wait: float | None = None,
        record: ExceptionMatcher = Exception,
        ignore: ExceptionMatcher | None = None,
        record_result: Callable[[Any], bool] | None = None,
        open_backoff: float = 1.0,
        max_open_duration: float | None = None,
        clock: Clock = SYSTEM_CLOCK,
        store: BreakerStore | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"CircuitBreaker(name={name!r}): name must be a non-empty str")
        for arg, value in (
            ("failure_rate_threshold", failure_rate_threshold),
            ("slow_call_rate_threshold", slow_call_rate_threshold),
        ):
            if not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
                raise ConfigurationError(f"{arg}={value!r}: must be a rate in (0, 1]")
        if slow_call_duration is not None and not (
            isinstance(slow_call_duration, (int, float)) and slow_call_duration > 0
        ):
            raise ConfigurationError(f"slow_call_duration={slow_call_duration!r}: must be > 0")
        if not isinstance(minimum_calls, int) or minimum_calls < 1:
            raise ConfigurationError(f"minimum_calls={minimum_calls!r}: must be an int >= 1")
        if not isinstance(open_duration, (int, float)) or not open_duration >= 0:
            raise ConfigurationError(f"open_duration={open_duration!r}: must be seconds >= 0")
        if not isinstance(half_open_max_calls, int) or half_open_max_calls < 1:
            raise ConfigurationError(
                f"half_open_max_calls={half_open_max_calls!r}: must be an int >= 1"
            )
        if not isinstance(open_backoff, (int, float)) or open_backoff < 1.0:
            raise ConfigurationError(f"open_backoff={open_backoff!r}: must be >= 1.0")
        if not isinstance(window, (CountWindow, TimeWindow)):
            raise ConfigurationError(
                f"window={window!r}: pass CountWindow(size) or TimeWindow(seconds=...)"
            )
        if record_result is not None and not callable(record_result):
            raise ConfigurationError("record_result must be a callable taking the result")
        self.name = name
        self.failure_rate_threshold = float(failure_rate_threshold)
        self.slow_call_rate_threshold = float(slow_call_rate_threshold)
        self.slow_call_duration = None if slow_call_duration is None else float(slow_call_duration)
        self.window = window
        if isinstance(window, CountWindow):
            minimum_calls = min(minimum_calls, window.size)
        self.minimum_calls = minimum_calls
        self.open_duration = float(open_duration)
        self.half_open_max_calls = half_open_max_calls
        if half_open_max_wait is not None and not (
            isinstance(half_open_max_wait, (int, float)) and half_open_max_wait > 0
        ):
            raise ConfigurationError(f"half_open_max_wait={half_open_max_wait!r}: must be > 0")
        self.half_open_max_wait = None if half_open_max_wait is None else float(half_open_max_wait)
        self._half_open_since = 0.0
        self._retry_after_hint = 0.0
        self.open_backoff = float(open_backoff)
        self.max_open_duration = None if max_open_duration is None else float(max_open_duration)
        self.clock = clock
        self.store = store
        record_fn = matcher(record, "record")
        self._record = record_fn or (lambda exc: False)
        self._ignore = matcher(ignore, "ignore")
        self._record_result = record_result
        # SystemClock: call time.monotonic directly (saves a method frame per read)
        self._now: Callable[[], float] = (
            time.monotonic if isinstance(clock, SystemClock) else clock.monotonic
        )
        self._rec: Any = make_recorder(window, minimum_calls)
        self._state = BreakerState.CLOSED
        self._gen = 0  # bumped on every transition; outcomes of older calls are discarded
        self._open_until = 0.0
        self._consecutive_opens = 0
        self._trial_permits = 0
        self._trial_calls = 0
        self._trial_failures = 0
        self._trial_slow = 0
        self._listeners: list[Callable[[StateChange], None]] = []
        # cumulative counters read by the metric callbacks
        self._n_closed_failures = 0
        self._n_trial_success = 0
        self._n_trial_failure = 0
        self._n_passthrough = 0
        self._n_ignored = 0
        self._n_rejected = 0
        # shared store bookkeeping
        self._shared_gen = -1
        self._trip_publishing = 0  # _store_trip tasks alive (each retries until it lands)
        self._next_sync = 0.0
        self._store_healthy = True
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending_shared: list[int] = []
        self._fast_rec: Any = None
        self._fast_time: Any = None
        self._with_inflight = 0  # ticketless `async with` entries of the current window
        self._stale_with = 0  # ticketless entries admitted before the last transition
        self._ticketed_open = 0  # open `async with` tickets of this breaker, in every task
        self._entered = _done(self)
        self._update_fast()
        _BREAKERS.add(self)
        self._instruments = _ensure_instruments()

    # -- public inspection ---------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker whose open time has passed reports HALF_OPEN."""
        if self._state is BreakerState.OPEN and self._now() >= self._open_until:
            self._to_half_open()
        return self._state

    def snapshot(self) -> BreakerSnapshot:
        """The state, window counts and rates right now."""
        state = self.state
        now = self._now()
        if state is BreakerState.HALF_OPEN:
            calls, failures, slow = self._trial_calls, self._trial_failures, self._trial_slow
        else:
            calls, failures, slow = self._rec.totals(now)
        return BreakerSnapshot(
            name=self.name,
            state=state,
            calls=calls,
            failures=failures,
            slow_calls=slow,
            failure_rate=failures / calls if calls else 0.0,
            slow_call_rate=slow / calls if calls else 0.0,
            open_remaining=max(0.0, self._open_until - now) if state is BreakerState.OPEN else 0.0,
            half_open_permits=self._trial_permits if state is BreakerState.HALF_OPEN else 0,
            total_calls=self._rec.seq
            + self._n_trial_success
            + self._n_trial_failure
            + self._n_passthrough,
            total_failures=self._n_closed_failures + self._n_trial_failure,
            total_rejected=self._n_rejected,
            store_healthy=self._store_healthy,
        )

    def add_listener(self, listener: Callable[[StateChange], None]) -> None:
        """Call ``listener(change)`` on every state change (exceptions in it are logged)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[StateChange], None]) -> None:
        """Stop calling ``listener``; unknown listeners are ignored."""
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    # -- operator controls ---------------------------------------------------------------------

    def force_open(self) -> None:
        """Reject every call until :meth:`reset` (local to this process)."""
        self._transition(BreakerState.FORCED_OPEN, "forced open by operator")

    def disable(self) -> None:
        """Let every call through and record nothing until :meth:`reset`."""
        self._transition(BreakerState.DISABLED, "disabled by operator")

    def reset(self) -> None:
        """Close the breaker and clear its window (also after force_open/disable)."""
        self._consecutive_opens = 0
        self._transition(BreakerState.CLOSED, "reset by operator")
        if self.store is not None:
            self._spawn(self._store_reset())

    async def aclose(self) -> None:
        """Wait for (then cancel) this breaker's background store operations.

        Call it before closing the Redis client the store uses; a local breaker has nothing
        to close.
        """
        tasks = list(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.store.timeout if self.store else 0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    # -- calling -------------------------------------------------------------------------------

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``await fn(*args, **kwargs)`` through the breaker.

        Raises:
            CircuitOpenError: the breaker is open, or its half-open trials are all taken; the
                call was not made.
        """
        # the closed-state fast paths: one attribute read admits the call; a call admitted
        # before a transition updates a window object that is no longer current (no effect)
        rec = self._fast_rec
        if rec is not None:
            try:
                result = await (fn(*args, **kwargs) if kwargs else fn(*args))  # type: ignore[call-arg]
            except BaseException as exc:
                self._on_exception(exc, self._gen if rec is self._fast_rec else -1, 0, 0.0)
                raise
            rec.seq += 1  # past minimum_calls: a success cannot open the breaker
            return result
        rec = self._fast_time
        if rec is not None:
            try:
                result = await (fn(*args, **kwargs) if kwargs else fn(*args))  # type: ignore[call-arg]
            except BaseException as exc:
                self._on_exception(exc, self._gen if rec is self._fast_time else -1, 0, 0.0)
                raise
            now = self._now()
            if now < rec.end:  # same time slice: nothing to evict, count and done
                rec.fresh_successes += 1
                # with failures in the window, a success can still bring it to minimum_calls
                if rec.failures and rec is self._fast_time:
                    self._evaluate_closed(now)
            elif rec is self._fast_time:
                self._record_outcome(0, self._gen, _KIND_CLOSED)
            return result
        if self._state is BreakerState.OPEN and self.store is None:
            # reject here, not two coroutine frames down: a shorter traceback per rejection
            now = self._now()
            if now < self._open_until:
                raise self._reject(self._open_until - now)
        return await self._call_slow(fn, args, kwargs)

    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        """Decorate an async function so every call goes through the breaker."""
        if not asyncio.iscoroutinefunction(fn):
            raise ConfigurationError(
                f"@{type(self).__name__} decorates async functions; {fn!r} is not one"
            )
        return _guard(self, fn)

    def _enter(self) -> Awaitable[CircuitBreaker]:
        # __aenter__ (see below): a plain method returning an awaitable; on the closed fast
        # path no coroutine is made, the awaitable is an already-completed future (C code, no
        # event loop involved)
        rec = self._fast_rec
        if rec is None:
            rec = self._fast_time
            if rec is None:
                return self._aenter_slow()
        if not (self._stale_with or self._ticketed_open):
            # no ticket, no context variable: while no straggler is in flight, every ticketless
            # entry belongs to the current window (_transition counts them out)
            self._with_inflight += 1
            return self._entered
        ticket = _get_ticket()
        while ticket is not None and ticket[0] is None:  # skip closed tickets
            ticket = ticket[5]
        if self._stale_with or (ticket is not None and ticket[0] is self):
            # stragglers in flight, or inside a ticketed entry of this breaker in this task:
            # a ticket says which admission this is
            self._ticketed_open += 1
            _set_ticket([self, rec, self._gen, _KIND_CLOSED, 0.0, ticket])
        else:
            self._with_inflight += 1
        return self._entered

    async def _aenter_slow(self) -> CircuitBreaker:
        gen, kind = await self._admit()
        start = self._now() if self.slow_call_duration is not None else 0.0
        ticket = _get_ticket()
        while ticket is not None and ticket[0] is None:
            ticket = ticket[5]
        self._ticketed_open += 1
        _set_ticket([self, None, gen, kind, start, ticket])
        return self

    def _exit(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Awaitable[None]:
        # __aexit__ (see below)
        if self._ticketed_open:
            ticket: list[Any] | None = _get_ticket()
            while ticket is not None and ticket[0] is None:
                ticket = ticket[5]
            if ticket is not None and ticket[0] is self:  # the entry took a ticket
                done: Awaitable[None] = self._exit_ticket(ticket, exc)
                return done
        # the matching entry took no ticket (this task's innermost open ticket is not this
        # breaker's): it was admitted on the fast path
        if self._stale_with:  # then every ticketless entry in flight is a straggler
            self._stale_with -= 1
            if exc is not None:
                self._on_exception(exc, -1, _KIND_CLOSED, 0.0)
            return _DONE
        if not self._with_inflight:
            raise RuntimeError(
                f"circuit breaker {self.name!r}: __aexit__ without a matching __aenter__ "
                "in this task"
            )
        self._with_inflight -= 1
        if exc is None:
            rec = self._fast_rec
            if rec is not None:
                rec.seq += 1
                return _DONE
            rec = self._fast_time
            now = self._now()
            if rec is not None and now < rec.end:
                rec.fresh_successes += 1
                if rec.failures:
                    self._evaluate_closed(now)
                return _DONE
            self._record_outcome(0, self._gen, _KIND_CLOSED)
        else:
            self._on_exception(exc, self._gen, _KIND_CLOSED, 0.0)
        return _DONE

    if TYPE_CHECKING:
        # what type checkers see (and AbstractAsyncContextManager expects): coroutines

        async def __aenter__(self) -> CircuitBreaker:
            return self

        async def __aexit__(
            self,
            exc_type: type[BaseException] | None,
            exc: BaseException | None,
            tb: TracebackType | None,
        ) -> None:
            return None

    else:
        __aenter__ = _enter
        __aexit__ = _exit

    def _exit_ticket(self, ticket: list[Any], exc: BaseException | None) -> Awaitable[None]:
        ticket[0] = None  # closed, not popped: no second context-variable write
        self._ticketed_open -= 1
        rec = ticket[1]
        if rec is not None:
            if exc is not None:
                self._on_exception(exc, ticket[2], _KIND_CLOSED, 0.0)
            elif rec is self._fast_rec:
                rec.seq += 1
            elif rec is self._fast_time:
                self._record_outcome(0, ticket[2], _KIND_CLOSED)
            return _DONE
        slow: Awaitable[None] = self._aexit_slow(ticket, exc)
        return slow

    async def _aexit_slow(self, ticket: list[Any], exc: BaseException | None) -> None:
        _, _, gen, kind, start, _ = ticket
        if exc is not None:
            self._on_exception(exc, gen, kind, start)
            if kind == _KIND_SHARED_TRIAL:
                await self._flush_shared()
        else:
            await self._on_success(None, gen, kind, start)

    # -- internals: admission ------------------------------------------------------------------

    async def _call_slow(self, fn: Callable[..., Awaitable[T]], args: Any, kwargs: Any) -> T:
        if self._state is BreakerState.CLOSED:
            # closed but not eligible for the fast path (time window, slow-call tracking,
            # result predicate or a store): inlined, no extra coroutine frames
            now_fn = self._now
            store = self.store
            if store is not None:
                now = now_fn()
                if now >= self._next_sync:
                    self._next_sync = now + store.sync_interval
                    self._spawn(self._store_sync())
            gen = self._gen
            slow_after = self.slow_call_duration
            start = now_fn() if slow_after is not None else 0.0
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                self._on_exception(exc, gen, _KIND_CLOSED, start)
                raise
            outcome = 0
            if self._record_result is not None and self._record_result(result):
                outcome = FAILURE
            if slow_after is not None and now_fn() - start >= slow_after:
                outcome |= SLOW
            if outcome or gen != self._gen:
                self._record_outcome(outcome, gen, _KIND_CLOSED)
                return result
            rec = self._rec
            if rec.__class__ is _CountRecorder:
                seq = rec.seq + 1
                rec.seq = seq
                if seq == rec.check_at:
                    self._evaluate_closed(0.0)
                    self._update_fast()
                return result
            now = now_fn()
            if now < rec.end:  # same time slice: count and done
                rec.fresh_successes += 1
                if rec.failures or rec.slow:
                    self._evaluate_closed(now)
                return result
            self._record_outcome(0, gen, _KIND_CLOSED)
            return result
        gen, kind = await self._admit()
        start = self._now() if self.slow_call_duration is not None else 0.0
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self._on_exception(exc, gen, kind, start)
            if kind == _KIND_SHARED_TRIAL:
                await self._flush_shared()
            raise
        await self._on_success(result, gen, kind, start)
        return result

    def _reject(self, retry_after: float, why: str | None = None) -> CircuitOpenError:
        self._n_rejected += 1
        span = get_current_span()
        if span.is_recording():
            span.add_event(
                "scalekit.breaker.rejected",
                {
                    "scalekit.breaker.name": self.name,
                    "scalekit.breaker.state": self._state.value,
                    "scalekit.breaker.retry_after": retry_after,
                },
            )
        # a fresh exception per rejection: constant cost, no traceback that grows
        return CircuitOpenError(self.name, retry_after, why)

    async def _admit(self) -> tuple[int, int]:
        state = self._state
        if state is BreakerState.CLOSED:
            if self.store is not None:
                self._maybe_sync()
            return self._gen, _KIND_CLOSED
        if state is BreakerState.DISABLED:
            return self._gen, _KIND_PASS
        if state is BreakerState.FORCED_OPEN:
            raise self._reject(
                0.0,
                f"circuit breaker {self.name!r} was forced open by an operator; the call was not "
                "made. Serve a fallback; reset() closes it.",
            )
        if state is BreakerState.OPEN:
            now = self._now()
            if now < self._open_until:
                if self.store is not None:
                    self._maybe_sync()
                raise self._reject(self._open_until - now)
            self._to_half_open()
        # HALF_OPEN
        if self._trial_permits <= 0:
            if self.store is not None:
                self._maybe_sync()  # another process may have decided for everyone
            wait = self.half_open_max_wait
            if wait is not None and self._now() - self._half_open_since >= wait:
                # trials that never finish must not keep the breaker half-open (resilience4j#935)
                self._consecutive_opens += 1
                self._to_open(f"half-open trials did not finish within {wait:g}s")
                raise self._reject(self._open_until - self._now())
            raise self._reject(
                0.0,
                f"circuit breaker {self.name!r} is half-open and all "
                f"{self.half_open_max_calls} trial calls are in flight; the call was not made. "
                "Retry shortly or serve a fallback.",
            )
        self._trial_permits -= 1
        gen = self._gen
        if self.store is None or not self._store_healthy_for_trials():
            return gen, _KIND_TRIAL
        return await self._admit_shared_trial(gen)

    # -- internals: outcomes -------------------------------------------------------------------

    def _classify(self, exc: BaseException) -> int | None:
        """Outcome bits for an exception, or None when it must not be recorded at all."""
        if isinstance(exc, NEVER_COUNTED):
            return None
        if self._ignore is not None and self._ignore(exc):
            return None
        return FAILURE if self._record(exc) else 0

    def _on_exception(self, exc: BaseException, gen: int, kind: int, start: float) -> None:
        outcome = self._classify(exc)
        if outcome is None:
            self._release(gen, kind, ignored=not isinstance(exc, NEVER_COUNTED))
            return
        slow_after = self.slow_call_duration
        if slow_after is not None and self._now() - start >= slow_after:
            outcome |= SLOW
        if outcome & FAILURE:
            # a server's Retry-After on the failure that trips the breaker sets its open time
            hint = getattr(exc, "retry_after", None)
            if isinstance(hint, (int, float)) and not isinstance(hint, bool) and hint > 0:
                self._retry_after_hint = float(hint)
        self._record_outcome(outcome, gen, kind)
        self._retry_after_hint = 0.0

    def _success_outcome(self, result: Any, start: float) -> int:
        outcome = 0
        if self._record_result is not None and self._record_result(result):
            outcome = FAILURE
        slow_after = self.slow_call_duration
        if slow_after is not None and self._now() - start >= slow_after:
            outcome |= SLOW
        return outcome

    async def _on_success(self, result: Any, gen: int, kind: int, start: float) -> None:
        self._record_outcome(self._success_outcome(result, start), gen, kind)
        if kind == _KIND_SHARED_TRIAL:
            await self._flush_shared()

    def _release(self, gen: int, kind: int, *, ignored: bool) -> None:
        if ignored:
            self._n_ignored += 1
        if (kind in (_KIND_TRIAL, _KIND_SHARED_TRIAL)) and gen == self._gen:
            self._trial_permits += 1  # give the trial slot back to the next caller
            if kind == _KIND_SHARED_TRIAL:
                self._spawn(self._store_release_trial())

    def _record_outcome(self, outcome: int, gen: int, kind: int) -> None:
        if kind == _KIND_PASS:
            self._n_passthrough += 1
            return
        if kind == _KIND_CLOSED:
            if outcome & FAILURE:
                self._n_closed_failures += 1
            if gen != self._gen:
                return
            now = self._now() if not isinstance(self._rec, _CountRecorder) else 0.0
            self._rec.record(outcome, now)
            if self._rec.should_check():
                self._evaluate_closed(now)
                self._update_fast()  # a count window at minimum_calls: the fast path opens
            elif outcome:
                self._evaluate_closed(now)
            return
        # trial
        if outcome & FAILURE:
            self._n_trial_failure += 1
        else:
            self._n_trial_success += 1
        if gen != self._gen:
            return
        self._trial_calls += 1
        if outcome & FAILURE:
            self._trial_failures += 1
        if outcome & SLOW:
            self._trial_slow += 1
        if kind == _KIND_SHARED_TRIAL:
            self._pending_shared.append(outcome)
            return
        if self._trial_calls >= self.half_open_max_calls:
            self._decide_half_open()

    def _over_threshold(self, calls: int, failures: int, slow: int) -> str | None:
        if failures and failures >= self.failure_rate_threshold * calls:
            return f"failure rate {failures / calls:.2f} >= {self.failure_rate_threshold:.2f}"
        if (
            slow
            and self.slow_call_duration is not None
            and slow >= self.slow_call_rate_threshold * calls
        ):
            return f"slow-call rate {slow / calls:.2f} >= {self.slow_call_rate_threshold:.2f}"
        return None

    def _evaluate_closed(self, now: float) -> None:
        if self._state is not BreakerState.CLOSED:
            return
        calls, failures, slow = self._rec.totals(now)
        if calls < self.minimum_calls:
            return
        why = self._over_threshold(calls, failures, slow)
        if why is not None:
            self._to_open(f"{why} over {calls} calls")

    def _decide_half_open(self) -> None:
        calls, failures, slow = self._trial_calls, self._trial_failures, self._trial_slow
        why = self._over_threshold(calls, failures, slow)
        if why is None:
            self._consecutive_opens = 0
            self._transition(BreakerState.CLOSED, f"{calls} trial calls passed")
        else:
            self._consecutive_opens += 1
            self._to_open(f"trial calls failed: {why}")

    # -- internals: transitions ----------------------------------------------------------------

    def _open_seconds(self) -> float:
        seconds = self.open_duration * self.open_backoff**self._consecutive_opens
        hint = self._retry_after_hint
        if hint > seconds:
            # honour the server's hint, within max_open_duration (or 10x open_duration)
            cap = self.max_open_duration
            seconds = min(hint, cap if cap is not None else 10 * self.open_duration)
        if self.max_open_duration is not None:
            seconds = min(seconds, self.max_open_duration)
        return seconds

    def _to_open(self, reason: str, seconds: float | None = None, *, publish: bool = True) -> None:
        duration = self._open_seconds() if seconds is None else seconds
        self._open_until = self._now() + duration
        self._transition(BreakerState.OPEN, reason)
        if publish and self.store is not None:
            self._publish_trip(duration)

    def _to_half_open(self) -> None:
        self._transition(BreakerState.HALF_OPEN, "open duration elapsed")

    def _update_fast(self) -> None:
        # the fast paths run only when closed with nothing to time, check or share:
        # _fast_rec is the count window then, _fast_time the time window, None otherwise
        # (one attribute read decides); every entry into CLOSED makes a new window object,
        # so stragglers update a dead one. A count window takes the fast path only once it
        # holds minimum_calls: before, the success that reaches it may open the breaker and
        # must be checked; after, a success never can, so the fast path only counts it
        rec = self._rec
        fast = (
            self._state is BreakerState.CLOSED
            and self.slow_call_duration is None
            and self._record_result is None
            and self.store is None
        )
        counted = isinstance(rec, _CountRecorder)
        self._fast_rec = rec if fast and counted and rec.seq >= rec.check_at else None
        self._fast_time = rec if fast and not counted else None

    def _transition(self, new: BreakerState, reason: str) -> None:
        previous = self._state
        self._gen += 1
        # ticketless `async with` entries still in flight were admitted before this change:
        # their outcomes are discarded, and until they are all out new entries take tickets
        self._stale_with += self._with_inflight
        self._with_inflight = 0
        self._state = new
        if new is BreakerState.CLOSED:
            self._rec = self._rec.fresh()
        if new is BreakerState.HALF_OPEN:
            self._half_open_since = self._now()
            self._trial_permits = self.half_open_max_calls
            self._trial_calls = self._trial_failures = self._trial_slow = 0
            self._pending_shared = []
        self._update_fast()
        if previous is new and new is not BreakerState.OPEN:
            return
        self._instruments[0].add(
            1, {"scalekit.breaker.name": self.name, "to": new.value, "from": previous.value}
        )
        level = 30 if new in (BreakerState.OPEN, BreakerState.FORCED_OPEN) else 20
        _log.log(
            level,
            "circuit breaker %r: %s -> %s (%s)",
            self.name,
            previous.value,
            new.value,
            reason,
            extra={"breaker": self.name, "state": new.value},
        )
        if self._listeners:
            change = StateChange(self.name, previous, new, reason, self.clock.time())
            for listener in list(self._listeners):
                try:
                    listener(change)
                except Exception:
                    _log.exception("circuit breaker %r: a state listener failed", self.name)

    # -- internals: the shared store -----------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> bool:
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:  # no running loop (reset() from sync code): skip the publish
            close = getattr(coro, "close", None)
            if close is not None:
                close()
            return False
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    def _publish_trip(self, duration: float) -> None:
        self._trip_publishing += 1
        if not self._spawn(self._store_trip(duration)):
            self._trip_publishing -= 1

    def _maybe_sync(self) -> None:
        assert self.store is not None
        now = self._now()
        if now >= self._next_sync:
            self._next_sync = now + self.store.sync_interval
            self._spawn(self._store_sync())

    def _store_healthy_for_trials(self) -> bool:
        return self._store_healthy or self._now() >= self._next_sync

    def _store_failed(self, exc: BaseException, what: str) -> None:
        self._instruments[1].add(1, {"scalekit.breaker.name": self.name, "operation": what})
        if self._store_healthy:
            self._store_healthy = False
            _log.warning(
                "circuit breaker %r: shared store failed during %s (%s); using local state "
                "until it answers again",
                self.name,
                what,
                type(exc).__name__,
                extra={"breaker": self.name},
            )

    def _store_ok(self) -> None:
        if not self._store_healthy:
            self._store_healthy = True
            _log.info("circuit breaker %r: shared store answers again", self.name)

    async def _store_op(self, what: str, op: Awaitable[SharedState]) -> SharedState | None:
        assert self.store is not None
        try:
            async with asyncio.timeout(self.store.timeout):
                shared = await op
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._store_failed(exc, what)
            return None
        self._store_ok()
        return shared

    def _adopt(self, shared: SharedState) -> None:
        """Follow the shared state when it is newer than what this process last saw."""
        state = self._state
        if (
            shared.state == "half_open"
            and shared.remaining <= 0
            and state is BreakerState.HALF_OPEN
            and self._trial_permits <= 0
        ):
            # the shared trials' lease ran out (a holder died): start a fresh local round,
            # whose first caller re-opens the shared half-open state
            self._transition(BreakerState.HALF_OPEN, "shared trial lease expired")
            return
        if shared.generation <= self._shared_gen:
            return
        if state in (BreakerState.FORCED_OPEN, BreakerState.DISABLED):
            return
        if shared.state == "open" and shared.remaining > 0:
            self._shared_gen = shared.generation
            if state is not BreakerState.OPEN or self._open_until - self._now() > shared.remaining:
                self._to_open("opened by another process", shared.remaining, publish=False)
            else:
                self._open_until = self._now() + shared.remaining
        elif shared.state == "closed" and state is not BreakerState.CLOSED:
            if self._shared_gen < 0:
                # our trip never reached the store (it was down): publish it now
                if state is BreakerState.OPEN and not self._trip_publishing:
                    self._publish_trip(max(0.0, self._open_until - self._now()))
                return
            self._shared_gen = shared.generation
            self._consecutive_opens = 0
            self._transition(BreakerState.CLOSED, "closed by another process")
        else:
            self._shared_gen = shared.generation

    async def _store_sync(self) -> None:
        assert self.store is not None
        local_gen = self._gen
        shared = await self._store_op("sync", self.store.read(self.name))
        # a local transition while the read was in flight makes the answer stale
        if shared is not None and local_gen == self._gen:
            self._adopt(shared)

    async def _store_trip(self, duration: float) -> None:
        assert self.store is not None
        gen, until = self._gen, self._now() + duration
        try:
            shared = await self._store_op("trip", self.store.trip(self.name, duration))
            # A trip that did not reach the store leaves every other process calling the
            # failing dependency, and this breaker may see no calls (so no sync) until it
            # closes: retry for as long as this open period lasts, at the sync interval.
            while shared is None:
                if gen != self._gen or until <= self._now():
                    return
                await self.clock.sleep(self.store.sync_interval)
                remaining = until - self._now()
                if gen != self._gen or remaining <= 0:
                    return
                shared = await self._store_op("trip", self.store.trip(self.name, remaining))
        finally:
            self._trip_publishing -= 1
        self._shared_gen = max(self._shared_gen, shared.generation)
        if shared.state == "open" and self._state is BreakerState.OPEN:
            # the breaker was already open elsewhere: end together
            self._open_until = min(self._open_until, self._now() + shared.remaining)

    async def _store_reset(self) -> None:
        assert self.store is not None
        shared = await self._store_op("reset", self.store.reset(self.name))
        if shared is not None:
            self._shared_gen = max(self._shared_gen, shared.generation)

    async def _store_release_trial(self) -> None:
        assert self.store is not None
        await self._store_op("release", self.store.release_trial(self.name))

    async def _admit_shared_trial(self, gen: int) -> tuple[int, int]:
        assert self.store is not None
        lease = max(self.open_duration, 1.0)
        op = self.store.acquire_trial(self.name, self.half_open_max_calls, lease)
        shared = await self._store_op("acquire_trial", op)
        if shared is None:
            return gen, _KIND_TRIAL  # store down: the local gate decides
        if gen != self._gen:  # the state moved while we waited
            raise self._reject(0.0)
        if shared.admitted:
            self._shared_gen = max(self._shared_gen, shared.generation)
            return gen, _KIND_SHARED_TRIAL
        self._trial_permits += 1
        if shared.state == "closed":
            self._shared_gen = shared.generation
            self._consecutive_opens = 0
            self._transition(BreakerState.CLOSED, "closed by another process")
            return self._gen, _KIND_CLOSED
        if shared.state == "open" and shared.remaining > 0:
            self._shared_gen = max(self._shared_gen, shared.generation)
            self._to_open("still open in the shared store", shared.remaining, publish=False)
            raise self._reject(shared.remaining)
        raise self._reject(0.0)

    async def _flush_shared(self) -> None:
        """Report finished shared trials; the store decides for every process."""
        pending = self._pending_shared
        if not pending or self.store is None:
            return
        self._pending_shared = []
        gen = self._gen
        for outcome in pending:
            op = self.store.report_trial(
                self.name,
                generation=self._shared_gen,
                failed=bool(outcome & FAILURE),
                slow=bool(outcome & SLOW),
                max_calls=self.half_open_max_calls,
                failure_rate_threshold=self.failure_rate_threshold,
                slow_call_rate_threshold=self.slow_call_rate_threshold
                if self.slow_call_duration is not None
                else 2.0,
                open_seconds=self._open_seconds_after_trial(),
            )
            shared = await self._store_op("report_trial", op)
            if gen != self._gen:
                return
            if shared is None:
                # store down mid half-open: decide from this process's trials
                if self._trial_calls >= self.half_open_max_calls:
                    self._decide_half_open()
                return
            self._shared_gen = max(self._shared_gen, shared.generation)
            if shared.state == "closed":
                self._consecutive_opens = 0
                self._transition(BreakerState.CLOSED, "trial calls passed (shared)")
                return
            if shared.state == "open":
                self._consecutive_opens += 1
                self._to_open("trial calls failed (shared)", shared.remaining, publish=False)
                return

    def _open_seconds_after_trial(self) -> float:
        seconds = self.open_duration * self.open_backoff ** (self._consecutive_opens + 1)
        if self.max_open_duration is not None:
            seconds = min(seconds, self.max_open_duration)
        return seconds

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self._state.value})"
