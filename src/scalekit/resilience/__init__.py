"""Resilience policies: circuit breaker, retry, timeout, bulkhead, fallback, adaptive limits and their pipeline.

Coming: this primitive is being built.
"""

from __future__ import annotations

__all__: list[str] = []
