from __future__ import annotations

import pytest

from scalekit.health import CheckResult, HealthReport, Status


def test_status_values_and_severity() -> None:
    assert [s.value for s in Status] == ["pass", "warn", "fail"]
    assert Status.PASS.severity < Status.WARN.severity < Status.FAIL.severity
    assert Status.WARN.healthy
    assert not Status.FAIL.healthy


def test_check_result_accepts_status_strings() -> None:
    result = CheckResult("warn", 3, "messages", "backlog")  # type: ignore[arg-type]
    assert result.status is Status.WARN


def test_check_result_rejects_unknown_status() -> None:
    with pytest.raises(TypeError, match="'pass', 'warn' or 'fail'"):
        CheckResult("ok")  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [object(), {1: "x"}, float("nan"), float("inf"), {"a": {1}}])
def test_check_result_rejects_non_json_observed_values(value: object) -> None:
    with pytest.raises(TypeError, match="observed_value"):
        CheckResult(Status.PASS, value)


def test_check_result_rejects_deep_nesting() -> None:
    value: object = 1
    for _ in range(10):
        value = [value]
    with pytest.raises(TypeError, match="nested too deeply"):
        CheckResult(Status.PASS, value)


def test_check_result_rejects_non_string_output() -> None:
    with pytest.raises(TypeError, match="output"):
        CheckResult(Status.FAIL, output=42)  # type: ignore[arg-type]


def test_constructors() -> None:
    assert CheckResult.passed(1.5, "ms") == CheckResult(Status.PASS, 1.5, "ms")
    assert CheckResult.warn("slow").status is Status.WARN
    assert CheckResult.fail("down", 0).observed_value == 0


def test_report_healthy_and_by_name() -> None:
    report = HealthReport("readiness", Status.WARN)
    assert report.healthy
    assert report.by_name() == {}
    assert not HealthReport(None, Status.FAIL).healthy
