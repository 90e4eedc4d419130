"""OpenTelemetry spans and metrics of the database, with the SDK's in-memory exporters."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from scalekit.balance import RoundRobin
from scalekit.db import Database
from scalekit.testing import FaultProxy, ManualClock

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


def _metrics(reader: InMemoryMetricReader, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    out = []
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            out += [m.data.data_points for m in scope.metrics if m.name == name]
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


async def test_spans_start_once_an_sdk_is_installed_after_the_database(
    postgres_dsn: str, postgres_replica_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # no SDK yet: the Database gets the API's proxy tracer and skips its no-op spans
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with Database(postgres_dsn, [postgres_replica_dsn]) as db:
        assert isinstance(db._tracer, trace.ProxyTracer)
        assert await db.fetchval("SELECT 1") == 1
        assert exporter.get_finished_spans() == ()
        # the application installs its SDK later: the same Database now traces every read
        monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
        assert await db.fetchval("SELECT 11") == 11
        assert await db.fetch("SELECT 12", max_lag=60) == [(12,)]
    provider.shutdown()
    names = {
        s.attributes["db.query.text"]: s.name for s in exporter.get_finished_spans() if s.attributes
    }
    assert names == {"SELECT 11": "SELECT replica", "SELECT 12": "SELECT replica"}


async def test_read_duration_uses_the_database_clock_when_the_balancer_has_its_own(
    postgres_dsn: str,
    postgres_replica_dsn: str,
    telemetry: tuple[InMemorySpanExporter, InMemoryMetricReader],
) -> None:
    _, reader = telemetry
    balancer_clock = ManualClock()
    balancer: RoundRobin[Any] = RoundRobin(panic_threshold=0, clock=balancer_clock)
    async with Database(postgres_dsn, [postgres_replica_dsn], balancer=balancer) as db:
        for _ in range(3):
            assert await db.fetchval("SELECT 1") == 1
        (endpoint,) = balancer.snapshot()
        assert endpoint.outstanding == 0
        assert endpoint.latency_ewma == 0.0  # the balancer's clock never moved
    durations = [
        p
        for m in _metrics(reader, "db.client.operation.duration")
        for p in m
        if p.attributes and p.attributes.get("scalekit.db.role") == "replica"
    ]
    assert len(durations) == 1
    assert durations[0].count == 3
    assert durations[0].sum > 0  # measured on the system clock
