"""The closed-state fast paths (count and time windows; call, @breaker and async with) keep
every semantic of the full route: stragglers discarded, failures counted, trips on time."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalekit.errors import CircuitOpenError
from scalekit.resilience import BreakerState, CircuitBreaker, CountWindow, TimeWindow
from scalekit.testing import ManualClock


class Boom(Exception):
    pass


async def ok(value: Any = "ok") -> Any:
    return value


async def fail() -> None:
    raise Boom("down")


Style = Callable[[CircuitBreaker, Callable[[], Awaitable[Any]]], Coroutine[Any, Any, Any]]


async def via_call(breaker: CircuitBreaker, fn: Callable[[], Awaitable[Any]]) -> Any:
    return await breaker.call(fn)


async def via_decorator(breaker: CircuitBreaker, fn: Callable[[], Awaitable[Any]]) -> Any:
    return await breaker(fn)()


async def via_async_with(breaker: CircuitBreaker, fn: Callable[[], Awaitable[Any]]) -> Any:
    async with breaker:
        return await fn()


STYLES = [via_call, via_decorator, via_async_with]
WINDOWS = [lambda: CountWindow(10), lambda: TimeWindow(seconds=10, buckets=5)]


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("window", WINDOWS)
async def test_straggler_outcome_is_discarded_after_a_transition(
    style: Style, window: Callable[[], Any]
) -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(
        "svc", clock=clock, window=window(), minimum_calls=2, open_duration=10.0
    )
    gate = asyncio.Event()

    async def straggler() -> None:
        await gate.wait()
        raise Boom("late")

    task = asyncio.create_task(style(breaker, straggler))
    await asyncio.sleep(0)
    breaker.reset()  # a transition while the straggler is in flight: a new window
    gate.set()
    with pytest.raises(Boom):
        await task
    assert breaker.snapshot().calls == 0
    assert breaker.snapshot().total_failures == 1  # still in the cumulative metric


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("window", WINDOWS)
async def test_every_style_trips_at_minimum_calls_and_rejects(
    style: Style, window: Callable[[], Any]
) -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(
        "svc", clock=clock, window=window(), minimum_calls=4, open_duration=10.0
    )
    for fn in (fail, fail, ok):
        with contextlib.suppress(Boom):
            await style(breaker, fn)
    assert breaker.state is BreakerState.CLOSED
    await style(breaker, ok)  # the success that brings the window to minimum: 2/4 fail
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(CircuitOpenError):
        await style(breaker, ok)


@pytest.mark.parametrize("style", STYLES)
async def test_cancellation_on_the_fast_path_is_neither_counted_nor_swallowed(
    style: Style,
) -> None:
    breaker = CircuitBreaker("svc", window=TimeWindow(seconds=10), minimum_calls=1)
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(style(breaker, hang))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    snap = breaker.snapshot()
    assert (snap.calls, snap.failures, snap.state) == (0, 0, BreakerState.CLOSED)


# -- the time window fast path against a naive model ------------------------------------------

step = st.tuples(
    st.sampled_from([0.0, 0.0, 0.5, 1.9, 2.0, 4.0, 11.0]),  # clock advance (slices of 2s)
    st.booleans(),  # fails
    st.integers(min_value=0, max_value=2),  # style
)


@settings(max_examples=60, deadline=None)
@given(minimum=st.integers(min_value=1, max_value=6), steps=st.lists(step, max_size=40))
def test_time_window_fast_path_matches_a_naive_model(
    minimum: int, steps: list[tuple[float, bool, int]]
) -> None:
    async def run() -> None:
        clock = ManualClock()
        breaker = CircuitBreaker(
            "svc",
            clock=clock,
            window=TimeWindow(seconds=10, buckets=5),
            minimum_calls=minimum,
            open_duration=1e9,
        )
        kept: list[tuple[int, bool]] = []
        for dt, fails, style in steps:
            await clock.advance(dt)
            try:
                await STYLES[style](breaker, fail if fails else ok)
            except Boom:
                pass
            except CircuitOpenError:
                assert breaker.state is BreakerState.OPEN
                return
            current = int(clock.monotonic() * 0.5)
            kept.append((current, fails))
            kept[:] = [(i, f) for i, f in kept if i > current - 5]
            failed = sum(f for _, f in kept)
            should_open = len(kept) >= minimum and failed and failed >= 0.5 * len(kept)
            if should_open:
                assert breaker.state is BreakerState.OPEN
                return
            snap = breaker.snapshot()
            assert (snap.state, snap.calls, snap.failures) == (
                BreakerState.CLOSED,
                len(kept),
                failed,
            )

    asyncio.run(run())


# -- async with ---------------------------------------------------------------------------------


async def test_async_with_gives_the_breaker_and_nests_the_same_breaker() -> None:
    breaker = CircuitBreaker("svc", minimum_calls=3)
    async with breaker as outer:
        assert outer is breaker
        with pytest.raises(Boom):
            async with breaker:
                raise Boom("inner")
        async with breaker:
            pass
    snap = breaker.snapshot()
    assert (snap.calls, snap.failures) == (3, 1)


async def test_async_with_through_an_exit_stack_and_across_child_tasks() -> None:
    breaker = CircuitBreaker("svc", minimum_calls=10)
    release = asyncio.Event()

    async def child() -> None:
        async with breaker:
            await release.wait()
            raise Boom("child")

    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(breaker)
        task = asyncio.create_task(child())  # inherits the parent's open ticket
        await asyncio.sleep(0)
    # the parent exited first; the child's exit must find its own ticket
    release.set()
    with pytest.raises(Boom):
        await task
    async with breaker:
        pass
    snap = breaker.snapshot()
    assert (snap.calls, snap.failures) == (3, 1)


async def test_async_with_exit_without_enter_is_refused() -> None:
    breaker = CircuitBreaker("svc")
    with pytest.raises(RuntimeError, match="without a matching __aenter__"):
        await breaker.__aexit__(None, None, None)
    async with breaker:
        pass
    with pytest.raises(RuntimeError, match="without a matching __aenter__"):
        await breaker.__aexit__(None, None, None)  # the closed ticket is not reused


async def test_async_with_in_half_open_takes_the_full_route() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(
        "svc", clock=clock, minimum_calls=1, open_duration=5.0, half_open_max_calls=1
    )
    with pytest.raises(Boom):
        async with breaker:
            raise Boom("trip")
    await clock.advance(5.0)
    async with breaker:
        with pytest.raises(CircuitOpenError):  # the only permit is ours
            async with breaker:
                pass
    assert breaker.state is BreakerState.CLOSED


# -- @breaker: a wrapper compiled with the function's own parameters ---------------------------

_DEFAULT: list[int] = []


async def shapes(
    a: int, b: int = 2, /, c: int = 3, *rest: int, d: int, e: list[int] = _DEFAULT, **extra: int
) -> tuple[Any, ...]:
    return a, b, c, rest, d, e, extra


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((1,), {"d": 4}),
        ((1, 5, 6, 7, 8), {"d": 4, "e": [9], "z": 0}),
        ((1,), {"c": 6, "d": 4}),
        ((1, 5), {"d": 4, "extra": 1}),
    ],
)
async def test_decorated_function_binds_exactly_like_the_original(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    guarded = CircuitBreaker("svc")(shapes)
    assert await guarded(*args, **kwargs) == await shapes(*args, **kwargs)
    assert inspect.signature(guarded) == inspect.signature(shapes)
    assert guarded.__qualname__ == shapes.__qualname__
    assert (await guarded(1, d=0))[5] is _DEFAULT  # the very default object


async def test_decorated_function_refuses_bad_arguments_like_the_original() -> None:
    breaker = CircuitBreaker("svc", minimum_calls=1)
    guarded = breaker(shapes)
    with pytest.raises(TypeError, match="shapes"):
        await guarded(1)  # d missing
    with pytest.raises(TypeError):
        await guarded(a=1, d=2)  # positional-only passed by keyword
    assert breaker.state is BreakerState.CLOSED  # a caller's bug is not the service's failure


async def test_decorator_on_methods_partials_and_odd_parameter_names() -> None:
    breaker = CircuitBreaker("svc")

    class Client:
        @breaker
        async def get(self, key: str) -> str:
            return key * 2

    async def odd(_sk_fn: int, *, _sk_rec: int = 1) -> int:
        return _sk_fn + _sk_rec

    async def shadowing(BaseException: int) -> int:
        if BaseException < 0:
            raise Boom("negative")
        return BaseException

    async def add(x: int, y: int) -> int:
        return x + y

    assert await Client().get("a") == "aa"
    assert await breaker(odd)(1, _sk_rec=2) == 3
    with pytest.raises(Boom):
        await breaker(shadowing)(-1)
    assert await breaker(shadowing)(BaseException=4) == 4
    assert await breaker(functools.partial(add, 1))(y=2) == 3
    assert await breaker(functools.partial(add, 1))(2) == 3
    assert breaker.snapshot().calls == 6
    assert breaker.snapshot().failures == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"slow_call_duration": 1.0},
        {"record_result": lambda r: r == "bad"},
        {"window": TimeWindow(seconds=5)},
    ],
)
async def test_decorator_and_call_agree_off_the_count_fast_path(kwargs: dict[str, Any]) -> None:
    clock = ManualClock()
    one = CircuitBreaker("a", clock=clock, minimum_calls=10, **kwargs)
    two = CircuitBreaker("b", clock=clock, minimum_calls=10, **kwargs)
    guarded = two(ok)
    for value in ("ok", "bad", "ok"):
        await one.call(ok, value)
        await guarded(value)
        assert one.snapshot().calls == two.snapshot().calls
        assert one.snapshot().failures == two.snapshot().failures


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("straggler_first", [True, False])
async def test_async_with_entries_after_a_transition_are_told_from_stragglers(
    window: Callable[[], Any], straggler_first: bool
) -> None:
    breaker = CircuitBreaker("svc", window=window(), minimum_calls=1)
    await breaker.call(ok)  # past minimum_calls: the fast path
    old, new = asyncio.Event(), asyncio.Event()

    async def use(gate: asyncio.Event, fails: bool) -> None:
        async with breaker:
            await gate.wait()
            if fails:
                raise Boom("x")

    straggler = asyncio.create_task(use(old, fails=True))
    await asyncio.sleep(0)
    breaker.reset()  # the straggler's window is gone
    fresh = asyncio.create_task(use(new, fails=False))
    await asyncio.sleep(0)
    first, second = (old, new) if straggler_first else (new, old)
    first.set()
    await asyncio.sleep(0)
    second.set()
    results = await asyncio.gather(straggler, fresh, return_exceptions=True)
    assert isinstance(results[0], Boom)
    assert results[1] is None
    snap = breaker.snapshot()
    assert (snap.calls, snap.failures, snap.state) == (1, 0, BreakerState.CLOSED)
    async with breaker:  # no straggler left: ticketless again, and counted
        pass
    assert breaker.snapshot().calls == 2


async def test_async_with_fast_entries_beside_and_inside_a_ticketed_entry() -> None:
    breaker = CircuitBreaker("svc", window=CountWindow(10), minimum_calls=2)
    release = asyncio.Event()

    async def early() -> None:
        async with breaker:  # before minimum_calls: the full route, with a ticket
            await release.wait()

    task = asyncio.create_task(early())
    await asyncio.sleep(0)
    async with breaker:  # also before minimum_calls
        await breaker.call(ok)  # the window reaches minimum_calls: fast path from now on
        async with breaker:  # inside this task's ticketed entry: takes a ticket too
            pass
    with pytest.raises(Boom):
        async with breaker:  # beside the other task's open ticket: ticketless
            raise Boom("x")
    release.set()
    await task
    snap = breaker.snapshot()
    assert (snap.calls, snap.failures) == (5, 1)


async def test_async_with_nested_in_a_straggling_entry_of_the_same_task() -> None:
    breaker = CircuitBreaker("svc", window=CountWindow(10), minimum_calls=1)
    async with breaker:  # before minimum_calls: ticketed
        breaker.reset()  # the outer entry is now a straggler
        await breaker.call(ok)  # fresh window at minimum_calls: fast path
        with pytest.raises(Boom):
            async with breaker:  # must count, though the outer one must not
                raise Boom("inner")
    snap = breaker.snapshot()
    assert (snap.calls, snap.failures) == (2, 1)
