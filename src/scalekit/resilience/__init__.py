"""Resilience policies: circuit breaker, retry, timeout, bulkhead, fallback, adaptive limits and their pipeline.

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
from scalekit.resilience.breaker import BreakerSnapshot, BreakerState, CircuitBreaker, StateChange
from scalekit.resilience.redis_store import RedisBreakerStore
from scalekit.resilience.store import BreakerStore, InMemoryBreakerStore, SharedState

__all__ = [
    "BreakerSnapshot",
    "BreakerState",
    "BreakerStore",
    "BulkheadFullError",
    "CircuitBreaker",
    "CircuitOpenError",
    "CountWindow",
    "DeadlineExceededError",
    "ExceptionMatcher",
    "InMemoryBreakerStore",
    "LoadShedError",
    "Policy",
    "RedisBreakerStore",
    "ResilienceError",
    "RetryBudgetExhaustedError",
    "RetryError",
    "SharedState",
    "StateChange",
    "TimeWindow",
    "Window",
]
