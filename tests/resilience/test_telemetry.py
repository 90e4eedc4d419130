"""Rejections and retries leave events on the caller's span (when one is recording)."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from scalekit.errors import CircuitOpenError, RetryError
from scalekit.resilience import CircuitBreaker, Retry
from scalekit.testing import ManualClock


@pytest.fixture
def tracer() -> tuple[trace.Tracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()  # private: the global provider is left alone
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("test"), exporter


async def test_rejection_and_retries_are_span_events(
    tracer: tuple[trace.Tracer, InMemorySpanExporter],
) -> None:
    t, exporter = tracer
    breaker = CircuitBreaker("traced", clock=ManualClock())
    breaker.force_open()

    async def down() -> None:
        raise ConnectionError("refused")

    async def noop() -> None:
        return None

    with t.start_as_current_span("request"):
        with pytest.raises(CircuitOpenError):
            await breaker.call(noop)
        with pytest.raises(RetryError):
            await Retry(attempts=3, wait_initial=0, clock=ManualClock()).call(down)
    (span,) = exporter.get_finished_spans()
    names = [e.name for e in span.events]
    assert names == ["scalekit.breaker.rejected", "scalekit.retry", "scalekit.retry"]
    assert span.events[0].attributes is not None
    assert span.events[0].attributes["scalekit.breaker.name"] == "traced"
    assert span.events[1].attributes is not None
    assert span.events[1].attributes["error.type"] == "ConnectionError"
