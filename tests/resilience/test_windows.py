"""The O(1) windows checked against naive recomputation."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from scalekit.resilience._windows import FAILURE, SLOW, _CountRecorder, _TimeRecorder

outcomes = st.sampled_from([0, FAILURE, SLOW, FAILURE | SLOW])


@settings(max_examples=300, deadline=None)
@given(size=st.integers(1, 8), minimum=st.integers(1, 8), script=st.lists(outcomes, max_size=60))
def test_count_window_matches_the_last_n_outcomes(
    size: int, minimum: int, script: list[int]
) -> None:
    rec = _CountRecorder(size, minimum)
    for i, outcome in enumerate(script):
        rec.record(outcome, 0.0)
        last = script[max(0, i + 1 - size) : i + 1]
        calls, failures, slow = rec.totals(0.0)
        assert calls == len(last)
        assert failures == sum(1 for o in last if o & FAILURE)
        assert slow == sum(1 for o in last if o & SLOW)
        assert rec.should_check() == (i + 1 == minimum)
    fresh = rec.fresh()
    assert fresh.totals(0.0) == (0, 0, 0)
    assert fresh.seq == len(script)


@settings(max_examples=300, deadline=None)
@given(
    seconds=st.sampled_from([1.0, 5.0, 10.0]),
    buckets=st.integers(1, 10),
    script=st.lists(
        st.tuples(st.sampled_from([0.0, 0.05, 0.3, 1.0, 4.0, 12.0]), outcomes), max_size=60
    ),
)
def test_time_window_matches_naive_slices(
    seconds: float, buckets: int, script: list[tuple[float, int]]
) -> None:
    rec = _TimeRecorder(seconds, buckets)
    scale = buckets / seconds
    now = 100.0
    kept: list[tuple[int, int]] = []
    for dt, outcome in script:
        now += dt
        rec.record(outcome, now)
        kept.append((int(now * scale), outcome))
        current = int(now * scale)
        live = [o for idx, o in kept if idx > current - buckets]
        assert rec.totals(now) == (
            len(live),
            sum(1 for o in live if o & FAILURE),
            sum(1 for o in live if o & SLOW),
        )
