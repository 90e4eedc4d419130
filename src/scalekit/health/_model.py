"""The vocabulary of health: statuses, check results and reports."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CheckOutcome", "CheckResult", "HealthReport", "Status"]


class Status(enum.StrEnum):
    """The three statuses of draft-inadarei-api-health-check-06.

    ``pass`` and ``warn`` are healthy (HTTP 200); ``fail`` is not (HTTP 503).
    """

    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"

    @property
    def severity(self) -> int:
        """0 for pass, 1 for warn, 2 for fail: the worst status of a set is the max."""
        return _SEVERITY[self]

    @property
    def healthy(self) -> bool:
        """Whether a probe with this status should keep the instance in rotation."""
        return self is not Status.FAIL


_SEVERITY = {Status.PASS: 0, Status.WARN: 1, Status.FAIL: 2}

# JSON-compatible observed values; the draft allows any JSON value.
_JSON_SCALARS = (str, int, float, bool, type(None))


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What a check returns when ``None`` (a plain pass) is not enough.

    Args:
        status: pass, warn or fail (a :class:`Status` or its string value).
        observed_value: the measured value (a number, string, bool, or a JSON-able list/dict).
        observed_unit: the unit of ``observed_value`` (``"ms"``, ``"s"``, ``"messages"``...).
        output: a human message, shown with details only; redacted of credentials.
        component_type: the draft's ``componentType`` (``"datastore"``, ``"component"``,
            ``"system"`` or a URI).
        component_id: the draft's ``componentId`` (for example a node address).

    Raises:
        TypeError: ``status`` is not a status, or ``observed_value`` is not JSON-compatible.
    """

    status: Status = Status.PASS
    observed_value: Any = None
    observed_unit: str | None = None
    output: str | None = None
    component_type: str | None = None
    component_id: str | None = None

    def __post_init__(self) -> None:
        try:
            status = Status(self.status)
        except ValueError:
            raise TypeError(
                f"CheckResult.status must be 'pass', 'warn' or 'fail', got {self.status!r}"
            ) from None
        object.__setattr__(self, "status", status)
        _validate_json(self.observed_value)
        for name in ("observed_unit", "output", "component_type", "component_id"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"CheckResult.{name} must be a str or None, got {value!r}")

    @classmethod
    def passed(cls, observed_value: Any = None, observed_unit: str | None = None) -> CheckResult:
        """A pass with an optional observed value."""
        return cls(Status.PASS, observed_value, observed_unit)

    @classmethod
    def warn(
        cls, output: str, observed_value: Any = None, observed_unit: str | None = None
    ) -> CheckResult:
        """A degraded result: the instance stays in rotation, the output says why."""
        return cls(Status.WARN, observed_value, observed_unit, output)

    @classmethod
    def fail(
        cls, output: str, observed_value: Any = None, observed_unit: str | None = None
    ) -> CheckResult:
        """A failed result: the probe answers 503 if the check is critical."""
        return cls(Status.FAIL, observed_value, observed_unit, output)


def _validate_json(value: Any, depth: int = 0) -> None:
    if depth > 8:
        raise TypeError("CheckResult.observed_value is nested too deeply (8 levels at most)")
    if isinstance(value, float) and not math.isfinite(value):
        raise TypeError(f"CheckResult.observed_value must be finite, got {value!r}")
    if isinstance(value, _JSON_SCALARS):
        return
    if isinstance(value, list | tuple):
        for item in value:
            _validate_json(item, depth + 1)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"CheckResult.observed_value keys must be str, got {key!r}")
            _validate_json(item, depth + 1)
        return
    raise TypeError(
        f"CheckResult.observed_value must be JSON-compatible (str, number, bool, None, "
        f"list, dict), got {type(value).__name__}"
    )


@dataclass(frozen=True, slots=True)
class CheckOutcome:
    """One run of one registered check, after timeouts, criticality and redaction.

    Attributes:
        name: the registered name, the ``"component:measurement"`` key of the response.
        status: the status the check itself reported (or fail on error or timeout).
        effective_status: ``status`` after criticality: a non-critical fail counts as warn.
        critical: whether the check was registered as critical.
        observed_value: the measured value (``None`` when the check measured nothing).
        observed_unit: the unit of ``observed_value``.
        output: the redacted message (``None`` for a plain pass).
        component_type: the draft's ``componentType``.
        component_id: the draft's ``componentId``.
        time: wall-clock seconds since the epoch when the run finished.
        duration: seconds the run took.
        error: the exception's type name when the check raised or timed out.
    """

    name: str
    status: Status
    effective_status: Status
    critical: bool
    observed_value: Any = None
    observed_unit: str | None = None
    output: str | None = None
    component_type: str | None = None
    component_id: str | None = None
    time: float = 0.0
    duration: float = 0.0
    error: str | None = None


@dataclass(frozen=True, slots=True)
class HealthReport:
    """The aggregated answer for one group (or for every check).

    Attributes:
        group: the group asked for (``None`` for all checks).
        status: the worst effective status of the checks (pass when there are none).
        checks: every outcome, in registration order.
        output: why the group fails when no check explains it (shutdown, startup pending).
    """

    group: str | None
    status: Status
    checks: tuple[CheckOutcome, ...] = field(default=())
    output: str | None = None

    @property
    def healthy(self) -> bool:
        """True for pass and warn (HTTP 200), False for fail (HTTP 503)."""
        return self.status is not Status.FAIL

    def by_name(self) -> dict[str, CheckOutcome]:
        """The outcomes keyed by check name."""
        return {c.name: c for c in self.checks}
