"""Liveness, readiness and startup probes as a pure ASGI app, with built-in dependency checks.

::

    from scalekit.health import HealthApp, HealthRegistry, checks

    registry = HealthRegistry()
    registry.add("redis:responseTime", checks.redis_ping(redis_client))
    registry.add("postgres:responseTime", checks.postgres_query(pool))
    app.mount("/health", HealthApp(registry))  # /health/livez, /health/readyz, /health/startupz

See ``docs/health.md`` for what belongs in liveness versus readiness and how to drain.
"""

from __future__ import annotations

from scalekit.health import checks
from scalekit.health._model import CheckOutcome, CheckResult, HealthReport, Status
from scalekit.health.app import CONTENT_TYPE, DEFAULT_PATHS, HealthApp, HealthResponse, render
from scalekit.health.checks import (
    BuiltinCheck,
    EventLoopMonitor,
    breaker_state,
    event_loop_lag,
    postgres_query,
    postgres_replica_lag,
    rabbitmq_connection,
    rabbitmq_queue_depth,
    redis_cluster_state,
    redis_ping,
    sharded_database,
)
from scalekit.health.lifespan import HealthLifespan, health_lifespan, install_signal_handlers
from scalekit.health.registry import LIVENESS, READINESS, STARTUP, Check, HealthRegistry

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_PATHS",
    "LIVENESS",
    "READINESS",
    "STARTUP",
    "BuiltinCheck",
    "Check",
    "CheckOutcome",
    "CheckResult",
    "EventLoopMonitor",
    "HealthApp",
    "HealthLifespan",
    "HealthReport",
    "HealthRegistry",
    "HealthResponse",
    "Status",
    "breaker_state",
    "checks",
    "event_loop_lag",
    "health_lifespan",
    "install_signal_handlers",
    "postgres_query",
    "postgres_replica_lag",
    "rabbitmq_connection",
    "rabbitmq_queue_depth",
    "redis_cluster_state",
    "redis_ping",
    "render",
    "sharded_database",
]
