"""The breaker's state machine checked against a small, obviously-correct reference model."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from scalekit.errors import CircuitOpenError
from scalekit.resilience import BreakerState, CircuitBreaker, CountWindow
from scalekit.testing import ManualClock

SLOW_AFTER = 1.0


class Boom(Exception):
    pass


class Ignored(Exception):
    pass


@dataclass
class Model:
    size: int
    minimum: int
    failure_rate: float
    slow_rate: float
    open_duration: float
    trials: int
    backoff: float
    max_open: float
    now: float = 0.0
    state: str = "closed"
    window: deque[tuple[bool, bool]] = field(default_factory=deque)
    open_until: float = 0.0
    permits: int = 0
    outcomes: list[tuple[bool, bool]] = field(default_factory=list)
    reopens: int = 0

    def bad(self, outcomes: list[tuple[bool, bool]]) -> bool:
        calls = len(outcomes)
        f = sum(1 for fail, _ in outcomes if fail)
        s = sum(1 for _, slow in outcomes if slow)
        return bool((f and f >= self.failure_rate * calls) or (s and s >= self.slow_rate * calls))

    def open(self) -> None:
        seconds = min(self.open_duration * self.backoff**self.reopens, self.max_open)
        self.state, self.open_until = "open", self.now + seconds

    def close(self) -> None:
        self.state, self.reopens = "closed", 0
        self.window.clear()

    def view(self) -> str:
        if self.state == "open" and self.now >= self.open_until:
            self.state, self.permits, self.outcomes = "half_open", self.trials, []
        return self.state

    def call(self, kind: str, duration: float) -> str:
        """Returns 'rejected' or 'called'."""
        state = self.view()
        if state in ("open", "forced_open"):
            return "rejected"
        if state == "half_open" and self.permits == 0:
            return "rejected"
        self.now += duration
        if state == "disabled":
            return "called"
        outcome = None if kind == "ignored" else (kind == "fail", duration >= SLOW_AFTER)
        if state == "half_open":
            if outcome is None:
                return "called"
            self.permits -= 1
            self.outcomes.append(outcome)
            if len(self.outcomes) >= self.trials:
                if self.bad(self.outcomes):
                    self.reopens += 1
                    self.open()
                else:
                    self.close()
            return "called"
        if outcome is None:
            return "called"
        self.window.append(outcome)
        while len(self.window) > self.size:
            self.window.popleft()
        if len(self.window) >= min(self.minimum, self.size) and self.bad(list(self.window)):
            self.open()
        return "called"


ops = st.one_of(
    st.tuples(st.sampled_from(["ok", "fail", "ignored"]), st.sampled_from([0.0, 0.5, 1.5])),
    st.tuples(st.just("advance"), st.sampled_from([0.5, 1.0, 5.0, 30.0])),
    st.tuples(st.sampled_from(["force_open", "reset", "disable"]), st.just(0.0)),
)


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(1, 6),
    minimum=st.integers(1, 8),
    failure_rate=st.sampled_from([0.25, 0.5, 1.0]),
    slow_rate=st.sampled_from([0.5, 1.0]),
    trials=st.integers(1, 3),
    backoff=st.sampled_from([1.0, 2.0]),
    script=st.lists(ops, max_size=60),
)
def test_breaker_follows_the_reference_model(
    size: int,
    minimum: int,
    failure_rate: float,
    slow_rate: float,
    trials: int,
    backoff: float,
    script: list[tuple[str, float]],
) -> None:
    model = Model(size, minimum, failure_rate, slow_rate, 10.0, trials, backoff, 35.0)
    asyncio.run(_run(model, script))


async def _run(model: Model, script: list[tuple[str, float]]) -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(
        "model",
        window=CountWindow(model.size),
        minimum_calls=model.minimum,
        failure_rate_threshold=model.failure_rate,
        slow_call_rate_threshold=model.slow_rate,
        slow_call_duration=SLOW_AFTER,
        open_duration=model.open_duration,
        half_open_max_calls=model.trials,
        open_backoff=model.backoff,
        max_open_duration=model.max_open,
        clock=clock,
        record=Boom,
        ignore=Ignored,
    )

    async def work(kind: str, duration: float) -> Any:
        clock.set(clock.monotonic() + duration)
        if kind == "fail":
            raise Boom()
        if kind == "ignored":
            raise Ignored()
        return kind

    for step, (op, arg) in enumerate(script):
        if op == "advance":
            model.now += arg
            await clock.advance(arg)
        elif op == "force_open":
            model.state = "forced_open"
            breaker.force_open()
        elif op == "disable":
            model.state = "disabled"
            breaker.disable()
        elif op == "reset":
            model.close()
            breaker.reset()
        else:
            expected = model.call(op, arg)
            try:
                await breaker.call(work, op, arg)
                got = "called"
            except CircuitOpenError:
                got = "rejected"
            except (Boom, Ignored):
                got = "called"
            assert got == expected, (step, op, arg)
        assert breaker.state.value == model.view(), (step, op, arg)
        snap = breaker.snapshot()
        if model.state == "closed":
            assert snap.calls == len(model.window)
            assert snap.failures == sum(1 for f, _ in model.window if f)
            assert snap.slow_calls == sum(1 for _, s in model.window if s)
        if model.state == "open":
            assert snap.open_remaining == model.open_until - model.now
    assert breaker.state is BreakerState(model.view())
