"""Resilience policies: breaker, retry, timeout, bulkhead, fallback, adaptive limit, pipeline.

Everything here is importable from :mod:`scalekit.resilience`; the Redis-backed breaker store
imports redis only when constructed.
"""

from __future__ import annotations

from scalekit.errors import (
    BulkheadFullError,
    CircuitOpenError,
    DeadlineExceededError,
    LoadShedError,
    ResilienceError,
    RetryBudgetExhaustedError,
    RetryError,
)
from scalekit.resilience._types import ExceptionMatcher, Policy
from scalekit.resilience._windows import CountWindow, TimeWindow, Window
from scalekit.resilience.adaptive import AdaptiveLimit, AdaptiveLimitStats
from scalekit.resilience.breaker import BreakerSnapshot, BreakerState, CircuitBreaker, StateChange
from scalekit.resilience.bulkhead import Bulkhead, BulkheadStats
from scalekit.resilience.fallback import Fallback
from scalekit.resilience.middleware import AdaptiveLimitMiddleware
from scalekit.resilience.pipeline import Pipeline
from scalekit.resilience.redis_store import RedisBreakerStore
from scalekit.resilience.retry import Retry, RetryBudget
from scalekit.resilience.store import BreakerStore, InMemoryBreakerStore, SharedState
from scalekit.resilience.timeout import Timeout, deadline, remaining

__all__ = [
    "AdaptiveLimit",
    "AdaptiveLimitMiddleware",
    "AdaptiveLimitStats",
    "BreakerSnapshot",
    "BreakerState",
    "BreakerStore",
    "Bulkhead",
    "BulkheadFullError",
    "BulkheadStats",
    "CircuitBreaker",
    "CircuitOpenError",
    "CountWindow",
    "DeadlineExceededError",
    "ExceptionMatcher",
    "Fallback",
    "InMemoryBreakerStore",
    "LoadShedError",
    "Pipeline",
    "Policy",
    "RedisBreakerStore",
    "ResilienceError",
    "Retry",
    "RetryBudget",
    "RetryBudgetExhaustedError",
    "RetryError",
    "SharedState",
    "StateChange",
    "TimeWindow",
    "Timeout",
    "Window",
    "deadline",
    "remaining",
]
