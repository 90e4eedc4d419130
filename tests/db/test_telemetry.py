"""OpenTelemetry spans and metrics of the database, with the SDK's in-memory exporters."""

from __future__ import annotations

from collections.abc import Iterator

import asyncpg
import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from scalekit.db import Database
from scalekit.testing import FaultProxy

pytestmark = [pytest.mark.postgres, pytest.mark.postgres_replica]


@pytest.fixture
def telemetry(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[InMemorySpanExporter, InMemoryMetricReader]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    # scalekit asks the global API for its tracer and meter at construction
    monkeypatch.setattr(trace, "get_tracer", provider.get_tracer)
    monkeypatch.setattr(metrics, "get_meter", meter_provider.get_meter)
    yield exporter, reader
    provider.shutdown()
    meter_provider.shutdown()


def _points(reader: InMemoryMetricReader, name: str) -> list[tuple[dict[str, object], float]]:
    data = reader.get_metrics_data()
    out = []
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    out += [(dict(p.attributes or {}), p.value) for p in metric.data.data_points]  # type: ignore[union-attr]
    return out


async def test_spans_carry_semantic_convention_attributes_and_role(
    postgres_dsn: str,
    postgres_replica_dsn: str,
    telemetry: tuple[InMemorySpanExporter, InMemoryMetricReader],
) -> None:
    exporter, reader = telemetry
    async with Database(postgres_dsn, [postgres_replica_dsn]) as db:
        await db.fetchval("SELECT 1")
        await db.primary.execute("SELECT 2")
        with pytest.raises(asyncpg.UndefinedTableError):
            await db.fetchval("SELECT * FROM no_such_table_here")
    spans = exporter.get_finished_spans()
    by_query = {s.attributes["db.query.text"]: s for s in spans if s.attributes}
    replica, primary = by_query["SELECT 1"], by_query["SELECT 2"]
    assert replica.kind is SpanKind.CLIENT
    assert replica.name == "SELECT replica"
    assert replica.attributes["db.system.name"] == "postgresql"
    assert replica.attributes["server.port"] == 5433
    assert replica.attributes["server.address"] == "127.0.0.1"
    assert replica.attributes["db.namespace"] == "test"
    assert replica.attributes["db.query.text"] == "SELECT 1"
    assert primary.attributes["server.port"] == 5432
    assert primary.attributes["scalekit.db.role"] == "primary"
    failed = [s for s in spans if s.status.status_code is StatusCode.ERROR]
    assert len(failed) == 1
    assert failed[0].attributes["error.type"] == "UndefinedTableError"
    reads = _points(reader, "scalekit.db.reads")
    assert ({"db.system.name": "postgresql", "scalekit.db.role": "replica"}, 1) in reads


async def test_fallbacks_and_lag_are_measured(
    postgres_dsn: str, telemetry: tuple[InMemorySpanExporter, InMemoryMetricReader]
) -> None:
    _, reader = telemetry
    async with (
        FaultProxy("127.0.0.1", 5433) as proxy,
        Database(postgres_dsn, [f"postgresql://postgres@127.0.0.1:{proxy.port}/test"]) as db,
    ):
        assert _points(reader, "scalekit.db.replica.lag")[0][1] >= 0
        await proxy.refuse()
        await proxy.cut()
        await db.check_replicas()
        assert await db.fetchval("SELECT 1") == 1
    assert ({"reason": "no_replica"}, 1) in _points(reader, "scalekit.db.fallbacks")
