"""A validator for draft-inadarei-api-health-check-06 documents (the field rules, by hand)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

STATUSES = {"pass", "fail", "warn"}
TOP_STRINGS = {"version", "releaseId", "serviceId", "description", "output"}
TOP_FIELDS = TOP_STRINGS | {"status", "notes", "checks", "links"}
CHECK_FIELDS = {
    "componentId",
    "componentType",
    "observedValue",
    "observedUnit",
    "status",
    "affectedEndpoints",
    "time",
    "output",
    "links",
}
PREDEFINED_TYPES = {"component", "datastore", "system"}
_ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def validate(doc: Any) -> None:
    """Raise AssertionError when ``doc`` breaks a rule of the draft."""
    assert isinstance(doc, dict), "the body is a JSON object"
    assert doc.get("status") in STATUSES, f"status is required and one of {STATUSES}"
    unknown = set(doc) - TOP_FIELDS
    assert not unknown, f"unknown top-level fields {unknown}"
    for key in TOP_STRINGS & set(doc):
        assert isinstance(doc[key], str), f"{key} is a string"
    if doc["status"] == "pass":
        assert "output" not in doc, "output SHOULD be omitted for pass"
    if "notes" in doc:
        assert isinstance(doc["notes"], list)
        assert all(isinstance(n, str) for n in doc["notes"])
    if "checks" in doc:
        checks = doc["checks"]
        assert isinstance(checks, dict), "checks is an object"
        for key, entries in checks.items():
            assert isinstance(key, str), "check keys are strings"
            assert key, "check keys are non-empty"
            assert key.count(":") <= 1, "key is componentName:measurementName"
            assert isinstance(entries, list), f"checks[{key!r}] is an array"
            assert entries, f"checks[{key!r}] is not empty"
            for entry in entries:
                _validate_check(key, entry)


def _validate_check(key: str, entry: Any) -> None:
    assert isinstance(entry, dict), f"each {key!r} entry is an object"
    unknown = set(entry) - CHECK_FIELDS
    assert not unknown, f"unknown fields {unknown} in {key!r}"
    if "status" in entry:
        assert entry["status"] in STATUSES
    if "componentType" in entry:
        ctype = entry["componentType"]
        assert isinstance(ctype, str)
        assert ctype in PREDEFINED_TYPES or ":" in ctype, "pre-defined value or a URI"
    for name in ("componentId", "observedUnit", "output"):
        if name in entry:
            assert isinstance(entry[name], str), f"{name} is a string"
    if "observedUnit" in entry:
        assert "observedValue" in entry, "a unit without a value"
    if "time" in entry:
        assert _ISO.match(entry["time"]), f"time is ISO 8601: {entry['time']!r}"
        datetime.fromisoformat(entry["time"].replace("Z", "+00:00"))
    if entry.get("status") == "pass":
        assert "output" not in entry, "output SHOULD be omitted for pass"
