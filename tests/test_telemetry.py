"""The instrumentation base: API only, named and versioned, no-op without an SDK."""

from __future__ import annotations

import scalekit
from scalekit import _telemetry


def test_tracer_and_meter_are_named_scalekit_with_the_version() -> None:
    tracer = _telemetry.tracer()
    meter = _telemetry.meter()
    # Proxies until an SDK is installed; their names are what the SDK will see.
    assert getattr(tracer, "_instrumenting_module_name", "scalekit") == "scalekit"
    assert getattr(tracer, "_instrumenting_library_version", scalekit.__version__) == (
        scalekit.__version__
    )
    assert getattr(meter, "_name", "scalekit") == "scalekit"


def test_spans_are_no_ops_without_an_sdk() -> None:
    with _telemetry.tracer().start_as_current_span("x") as span:
        assert not span.is_recording()
