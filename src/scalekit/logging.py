"""Optional structured logging: a JSON formatter for the standard :mod:`logging` module.

scalekit never configures logging itself; its loggers live under ``scalekit.*``. Applications
that want one JSON object per line (with the active trace and span ids) can use::

    import logging
    from scalekit.logging import JsonFormatter

    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logging.getLogger().addHandler(handler)
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from typing import Any

from opentelemetry import trace

from scalekit._redact import redact_text

__all__ = ["JsonFormatter"]

# LogRecord attributes that are not user-supplied ``extra=`` fields.
_RESERVED = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


class JsonFormatter(logging.Formatter):
    """Format each record as one JSON object on one line.

    Fields: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``, ``trace_id`` and
    ``span_id`` when a recording span is active, ``exc_info`` when an exception is attached, and
    every ``extra=`` field (values that are not JSON-serializable are rendered with ``repr``).
    Credentials in URLs in the message are redacted.

    Args:
        static_fields: fields added to every record, e.g. ``{"service": "api"}``.
    """

    def __init__(self, *, static_fields: dict[str, Any] | None = None) -> None:
        super().__init__()
        self._static = dict(static_fields or {})

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a single JSON line."""
        payload: dict[str, Any] = dict(self._static)
        payload["time"] = _dt.datetime.fromtimestamp(record.created, tz=_dt.UTC).isoformat(
            timespec="milliseconds"
        )
        payload["level"] = record.levelname
        payload["logger"] = record.name
        payload["message"] = redact_text(record.getMessage())
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            payload["trace_id"] = format(context.trace_id, "032x")
            payload["span_id"] = format(context.span_id, "016x")
        if record.exc_info:
            payload["exc_info"] = redact_text(self.formatException(record.exc_info))
        if record.stack_info:
            payload["stack_info"] = record.stack_info
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                payload[key] = value
        return json.dumps(payload, default=repr, ensure_ascii=False, separators=(",", ":"))
