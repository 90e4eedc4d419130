"""Two breakers with the same name (think: two pods) share state through Redis."""

# requires: redis

import asyncio
import contextlib
import os

import redis.asyncio as aioredis

from scalekit.errors import CircuitOpenError
from scalekit.resilience import BreakerState, CircuitBreaker, CountWindow, RedisBreakerStore

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("SCALEKIT_EXAMPLE_PREFIX", "example") + ":cb"


async def failing() -> None:
    raise ConnectionError("inventory service refused the connection")


async def ok() -> str:
    return "ok"


def make_breaker(client: aioredis.Redis) -> CircuitBreaker:
    store = RedisBreakerStore(client, prefix=PREFIX, sync_interval=0.05)
    return CircuitBreaker(
        "inventory", window=CountWindow(10), minimum_calls=3, open_duration=0.5, store=store
    )


async def main() -> None:
    pod_a_client, pod_b_client = aioredis.from_url(REDIS_URL), aioredis.from_url(REDIS_URL)
    pod_a, pod_b = make_breaker(pod_a_client), make_breaker(pod_b_client)
    try:
        await pod_b.call(ok)
        for _ in range(3):  # pod A sees the failures and trips
            with contextlib.suppress(ConnectionError):
                await pod_a.call(failing)
        assert pod_a.state is BreakerState.OPEN

        # pod B learns it within sync_interval, without a failure of its own
        for _ in range(200):
            try:
                await pod_b.call(ok)
            except CircuitOpenError:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("pod B never saw the shared open state")
        print("pod B rejected calls after pod A tripped")
    finally:
        await pod_a.aclose()  # let background store operations finish before closing clients
        await pod_b.aclose()
        await pod_a_client.delete(RedisBreakerStore(pod_a_client, prefix=PREFIX).key("inventory"))
        await pod_a_client.aclose()
        await pod_b_client.aclose()


asyncio.run(main())
