"""W3C trace context in message headers, free when no OpenTelemetry SDK is installed."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

__all__ = ["extract_context", "inject_context", "tracing_enabled"]


def tracing_enabled() -> bool:
    """True once the application installed an SDK tracer provider (the API alone is a no-op)."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def inject_context(headers: MutableMapping[str, Any]) -> None:
    """Write ``traceparent``/``tracestate`` (and baggage) of the current context into headers."""
    propagate.inject(headers)


def extract_context(headers: Mapping[str, Any]) -> otel_context.Context:
    """The context carried by a message's headers (bytes values are decoded)."""
    carrier = {
        k: (v.decode("latin-1") if isinstance(v, bytes) else str(v))
        for k, v in headers.items()
        if k in ("traceparent", "tracestate", "baggage")
    }
    return propagate.extract(carrier)
