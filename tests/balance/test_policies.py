"""Balancer behaviour: policies, marking down/up, outlier ejection, panic mode, slow start."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalekit.balance import Balancer, LeastOutstanding, PowerOfTwoChoices, RoundRobin
from scalekit.errors import ConfigurationError, NoEndpointAvailableError, ServiceUnavailableError
from scalekit.testing import ManualClock

POLICIES: list[type[Balancer[str]]] = [RoundRobin, LeastOutstanding, PowerOfTwoChoices]


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_uses_every_endpoint(policy: type[Balancer[str]]) -> None:
    balancer = policy(["a", "b", "c"], seed=7)
    seen = Counter(balancer.choose() for _ in range(300))
    assert set(seen) == {"a", "b", "c"}


def test_round_robin_rotates_evenly() -> None:
    balancer = RoundRobin(["a", "b", "c"])
    seen = Counter(balancer.choose() for _ in range(300))
    assert seen == {"a": 100, "b": 100, "c": 100}


def test_weighted_round_robin_is_proportional_and_interleaved() -> None:
    balancer = RoundRobin(["a", "b"], weights={"a": 3.0, "b": 1.0})
    picks = [balancer.choose() for _ in range(8)]
    assert Counter(picks) == {"a": 6, "b": 2}
    assert "b" in picks[:4]
    assert "b" in picks[4:]


def test_least_outstanding_avoids_busy_endpoints() -> None:
    balancer = LeastOutstanding(["a", "b", "c"])
    held = [balancer.lease_on("a"), balancer.lease_on("a"), balancer.lease_on("b")]
    assert balancer.choose() == "c"
    for lease in held:
        lease.release()
    assert {balancer.snapshot()[i].outstanding for i in range(3)} == {0}


async def test_p2c_prefers_the_faster_endpoint() -> None:
    clock = ManualClock()
    balancer = PowerOfTwoChoices(["fast", "slow"], clock=clock, seed=3)
    balancer.observe("fast", latency=0.001)
    balancer.observe("slow", latency=0.200)
    seen = Counter(balancer.choose() for _ in range(200))
    assert seen["fast"] == 200  # with two endpoints both are always compared


async def test_p2c_peak_ewma_jumps_up_and_decays_down() -> None:
    clock = ManualClock()
    balancer = PowerOfTwoChoices(["a"], clock=clock, decay_time=10.0)
    balancer.observe("a", latency=0.010)
    balancer.observe("a", latency=0.500)
    assert balancer.snapshot()[0].latency_ewma == pytest.approx(0.5)
    await clock.advance(10.0)
    balancer.observe("a", latency=0.010)
    ewma = balancer.snapshot()[0].latency_ewma
    assert 0.010 < ewma < 0.5 * 0.5


@pytest.mark.parametrize("policy", POLICIES)
def test_marked_down_endpoint_is_skipped_until_marked_up(policy: type[Balancer[str]]) -> None:
    balancer = policy(["a", "b", "c"], panic_threshold=0.0, seed=1)
    balancer.mark_down("b")
    assert "b" not in {balancer.choose() for _ in range(100)}
    assert not balancer.is_available("b")
    balancer.mark_up("b")
    assert "b" in {balancer.choose() for _ in range(100)}


def test_no_endpoint_raises_a_service_unavailable_error() -> None:
    balancer = RoundRobin(["a"], panic_threshold=0.0)
    balancer.mark_down("a")
    with pytest.raises(NoEndpointAvailableError) as info:
        balancer.choose()
    assert isinstance(info.value, ServiceUnavailableError)
    assert balancer.try_choose() is None
    with pytest.raises(NoEndpointAvailableError, match="no endpoints"):
        RoundRobin([]).choose()


def test_accept_filter_is_applied_with_the_choice() -> None:
    balancer = PowerOfTwoChoices(["a", "b", "c"], seed=2)
    assert {balancer.choose(accept=lambda e: e != "a") for _ in range(100)} == {"b", "c"}
    assert balancer.try_choose(accept=lambda e: False) is None


async def test_consecutive_failures_eject_for_a_growing_time() -> None:
    clock = ManualClock()
    balancer = RoundRobin(
        ["a", "b", "c"], clock=clock, failure_threshold=3, ejection_time=10.0, panic_threshold=0
    )
    for _ in range(2):
        balancer.observe("a", success=False)
    balancer.observe("a", success=True)  # a success resets the streak
    for _ in range(2):
        balancer.observe("a", success=False)
    assert balancer.is_available("a")
    balancer.observe("a", success=False)
    assert not balancer.is_available("a")
    assert balancer.snapshot()[0].state == "ejected"
    assert "a" not in {balancer.choose() for _ in range(30)}
    await clock.advance(10.0)
    assert balancer.is_available("a")
    for _ in range(3):
        balancer.observe("a", success=False)
    assert balancer.snapshot()[0].ejected_for == pytest.approx(20.0)  # second ejection: 2x
    await clock.advance(19.9)
    assert not balancer.is_available("a")
    await clock.advance(0.1)
    assert "a" in {balancer.choose() for _ in range(30)}


async def test_ejection_time_is_capped_and_the_count_resets_after_quiet_time() -> None:
    clock = ManualClock()
    balancer = RoundRobin(
        ["a", "b"], clock=clock, failure_threshold=1, ejection_time=10.0, max_ejection_time=25.0
    )
    for expected in (10.0, 20.0, 25.0):
        balancer.observe("a", success=False)
        assert balancer.snapshot()[0].ejected_for == pytest.approx(expected)
        await clock.advance(expected)
    await clock.advance(26.0)
    balancer.observe("a", success=False)
    assert balancer.snapshot()[0].ejected_for == pytest.approx(10.0)


def test_at_most_the_configured_share_is_ejected() -> None:
    balancer = RoundRobin(
        ["a", "b", "c", "d"], failure_threshold=1, max_ejected_fraction=0.25, panic_threshold=0
    )
    balancer.observe("a", success=False)
    balancer.observe("b", success=False)
    states = [s.state for s in balancer.snapshot()]
    assert states == ["ejected", "up", "up", "up"]


def test_panic_mode_balances_over_all_endpoints() -> None:
    balancer = RoundRobin(["a", "b", "c", "d"], panic_threshold=0.5)
    balancer.mark_down("a")
    balancer.mark_down("b")
    assert not balancer.panicking  # 2 of 4 available: exactly at the threshold
    assert {balancer.choose() for _ in range(20)} == {"c", "d"}
    balancer.mark_down("c")
    assert balancer.panicking
    assert {balancer.choose() for _ in range(20)} == {"a", "b", "c", "d"}
    balancer.mark_up("a")
    assert not balancer.panicking


async def test_slow_start_ramps_a_returning_endpoint() -> None:
    clock = ManualClock()
    balancer = RoundRobin(["a", "b"], clock=clock, slow_start=10.0, panic_threshold=0)
    balancer.mark_down("a")
    balancer.mark_up("a")
    assert balancer.snapshot()[0].state == "warming"
    early = Counter(balancer.choose() for _ in range(110))
    assert early["a"] == 10  # weight 0.1 of b's 1.0
    await clock.advance(5.0)
    assert balancer.snapshot()[0].effective_weight == pytest.approx(0.5)
    await clock.advance(5.0)
    assert balancer.snapshot()[0].state == "up"
    late = Counter(balancer.choose() for _ in range(100))
    assert late == {"a": 50, "b": 50}


def test_lease_counts_outstanding_and_reports_exceptions_as_failures() -> None:
    balancer = LeastOutstanding(["a"], failure_threshold=2, panic_threshold=0)
    with balancer.lease() as lease:
        assert balancer.snapshot()[0].outstanding == 1
    assert balancer.snapshot()[0].outstanding == 0
    for _ in range(2):
        with pytest.raises(RuntimeError), balancer.lease():
            raise RuntimeError("boom")
    assert balancer.snapshot()[0].state == "ejected"
    lease = balancer.lease_on("a")
    lease.release(success=False)
    lease.release()  # idempotent
    assert balancer.snapshot()[0].outstanding == 0


def test_add_and_remove_endpoints() -> None:
    balancer = RoundRobin(["a"])
    balancer.add("b", weight=2.0)
    assert balancer.endpoints == ("a", "b")
    assert "b" in balancer
    assert len(balancer) == 2
    balancer.remove("a")
    assert {balancer.choose() for _ in range(10)} == {"b"}
    with pytest.raises(KeyError):
        balancer.mark_down("a")
    with pytest.raises(ConfigurationError):
        balancer.add("b")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failure_threshold": -1},
        {"ejection_time": 10.0, "max_ejection_time": 5.0},
        {"max_ejected_fraction": 1.5},
        {"panic_threshold": -0.1},
        {"slow_start": -1.0},
        {"decay_time": 0.0},
        {"weights": {"a": 0.0}},
        {"weights": {"a": float("inf")}},
    ],
)
def test_bad_configuration_is_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        RoundRobin(["a"], **kwargs)  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=8),
    down=st.sets(st.integers(min_value=0, max_value=7)),
    policy=st.sampled_from(POLICIES),
)
def test_choice_is_always_available_unless_panicking(
    n: int, down: set[int], policy: type[Balancer[int]]
) -> None:
    balancer = policy(range(n), seed=0)
    for i in down & set(range(n)):
        balancer.mark_down(i)
    available = [i for i in range(n) if balancer.is_available(i)]
    for _ in range(20):
        choice = balancer.try_choose()
        if balancer.panicking:
            assert choice in range(n)
        elif available:
            assert choice in available
        else:
            assert choice is None


@settings(max_examples=40, deadline=None)
@given(weights=st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=6))
def test_weighted_round_robin_is_exact_over_a_cycle(weights: list[int]) -> None:
    balancer = RoundRobin(range(len(weights)), weights=dict(enumerate(map(float, weights))))
    picks = Counter(balancer.choose() for _ in range(sum(weights) * 3))
    assert picks == {i: w * 3 for i, w in enumerate(weights)}


@settings(max_examples=40, deadline=None)
@given(
    outstanding=st.lists(st.integers(min_value=0, max_value=5), min_size=2, max_size=6),
)
def test_least_outstanding_always_picks_a_minimum(outstanding: list[int]) -> None:
    balancer = LeastOutstanding(range(len(outstanding)))
    for i, count in enumerate(outstanding):
        for _ in range(count):
            balancer.lease_on(i)
    for _ in range(10):
        assert outstanding[balancer.choose()] == min(outstanding)


@pytest.mark.parametrize("success", [True, False])
@pytest.mark.parametrize("latencies", [[0.5, 0.1, 0.2], [0.1, 0.5, 0.05], [0.3]])
def test_internal_finish_matches_a_lease_release(success: bool, latencies: list[float]) -> None:
    # scalekit.db counts calls with _choose_any/_finish instead of Lease objects: same outcome
    clocks = ManualClock(), ManualClock()
    by_lease = PowerOfTwoChoices(["a"], failure_threshold=2, clock=clocks[0])
    by_finish = PowerOfTwoChoices(["a"], failure_threshold=2, clock=clocks[1])
    for latency in latencies:
        lease = by_lease.lease()
        node = by_finish._choose_any(clocks[1].monotonic())
        assert node is not None
        node.outstanding += 1
        started = clocks[1].monotonic()
        for clock in clocks:
            clock.set(clock.monotonic() + latency)
        lease.release(success=success)
        by_finish._finish(node, started, clocks[1].monotonic(), success)
        assert by_finish.snapshot() == by_lease.snapshot()
