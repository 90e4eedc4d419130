"""The package surface: exports, lazy driver import, telemetry."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import scalekit.cache
from scalekit.cache import Cache, MemoryBackend


def test_public_names_are_pinned() -> None:
    assert sorted(scalekit.cache.__all__) == [
        "Backend",
        "BackendBreaker",
        "Cache",
        "CacheStats",
        "JsonSerializer",
        "MemoryBackend",
        "MsgpackSerializer",
        "NearCache",
        "RedisBackend",
        "Serializer",
        "SignedSerializer",
        "Signer",
        "WriteThroughCache",
    ]


def test_importing_the_package_does_not_import_redis() -> None:
    code = "import sys, scalekit.cache; print('redis' in sys.modules, 'msgpack' in sys.modules)"
    src = str(Path(scalekit.cache.__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": src}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == "False False"


async def test_counters_are_exported_as_opentelemetry_metrics() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    import scalekit.cache.core as core

    original = core.meter
    core.meter = lambda: provider.get_meter("scalekit")  # type: ignore[assignment]
    try:
        cache = Cache(MemoryBackend(), namespace="otel")
        await cache.get_or_load("k", _load)
        await cache.get_or_load("k", _load)
    finally:
        core.meter = original
    data = reader.get_metrics_data()
    assert data is not None
    points: dict[str, float] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for point in metric.data.data_points:
                    if point.attributes.get("scalekit.cache.namespace") == "otel":
                        points[metric.name] = getattr(point, "value", getattr(point, "count", 0))
    assert points["scalekit.cache.hits"] == 1
    assert points["scalekit.cache.misses"] == 1
    assert points["scalekit.cache.loads"] == 1
    assert points["scalekit.cache.load.duration"] == 1
    provider.shutdown()


async def _load() -> str:
    return "v"
