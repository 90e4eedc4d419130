"""The one place scalekit gets its OpenTelemetry tracer and meter and its loggers.

Only ``opentelemetry-api`` is used: until the application installs an SDK, every span and
instrument is a no-op. Instruments are created once per component (at construction), never on
the hot path.
"""

from __future__ import annotations

import logging

from opentelemetry import metrics, trace

from scalekit._version import __version__

__all__ = ["INSTRUMENTATION_NAME", "get_logger", "meter", "tracer"]

INSTRUMENTATION_NAME = "scalekit"


def tracer() -> trace.Tracer:
    """The ``scalekit`` tracer, versioned with the package (a proxy until an SDK is set)."""
    return trace.get_tracer(INSTRUMENTATION_NAME, __version__)


def meter() -> metrics.Meter:
    """The ``scalekit`` meter, versioned with the package (a proxy until an SDK is set)."""
    return metrics.get_meter(INSTRUMENTATION_NAME, __version__)


def get_logger(name: str) -> logging.Logger:
    """A logger under ``scalekit.``; the library never adds handlers to it."""
    if name != "scalekit" and not name.startswith("scalekit."):
        name = f"scalekit.{name}"
    return logging.getLogger(name)
