"""The optional JSON log formatter."""

from __future__ import annotations

import json
import logging

from opentelemetry.sdk.trace import TracerProvider

from scalekit._telemetry import get_logger
from scalekit.logging import JsonFormatter


def _record(msg: str = "hello %s", *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord(
        "scalekit.test", logging.INFO, __file__, 10, msg, args or ("x",), None
    )
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_one_json_object_per_line() -> None:
    line = JsonFormatter().format(_record())
    assert "\n" not in line
    payload = json.loads(line)
    assert payload["message"] == "hello x"
    assert payload["level"] == "INFO"
    assert payload["logger"] == "scalekit.test"
    assert payload["time"].endswith("+00:00")


def test_extra_and_static_fields_are_included() -> None:
    fmt = JsonFormatter(static_fields={"service": "api"})
    payload = json.loads(fmt.format(_record(breaker="payments", obj=object())))
    assert payload["service"] == "api"
    assert payload["breaker"] == "payments"
    assert payload["obj"].startswith("<object object")  # not serializable: repr


def test_trace_and_span_ids_when_a_span_is_active() -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("op") as span:
        payload = json.loads(JsonFormatter().format(_record()))
        ctx = span.get_span_context()
    assert payload["trace_id"] == format(ctx.trace_id, "032x")
    assert payload["span_id"] == format(ctx.span_id, "016x")


def test_no_trace_ids_without_a_span() -> None:
    payload = json.loads(JsonFormatter().format(_record()))
    assert "trace_id" not in payload


def test_exceptions_are_rendered() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = _record()
        record.exc_info = sys.exc_info()
    payload = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in payload["exc_info"]


def test_library_loggers_live_under_scalekit_and_have_no_handlers() -> None:
    assert get_logger("cache").name == "scalekit.cache"
    assert get_logger("scalekit.db").name == "scalekit.db"
    assert logging.getLogger("scalekit").handlers == []
