"""The calls the shared-breaker tests protect: one that succeeds, one that fails."""

from __future__ import annotations

import pytest

from scalekit.resilience import BreakerState, CircuitBreaker


class Boom(Exception):
    """The failure of :func:`fail`."""


async def ok() -> str:
    return "ok"


async def fail() -> None:
    raise Boom


async def trip_until_open(breaker: CircuitBreaker) -> None:
    """Fail calls through ``breaker`` until it opens."""
    while breaker.state is BreakerState.CLOSED:
        with pytest.raises(Boom):
            await breaker.call(fail)
