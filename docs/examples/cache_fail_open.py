"""Redis down: reads miss within the timeout, loaders still serve, strict mode raises."""

import asyncio
import socket
import time

import redis.asyncio as redis

from scalekit.cache import Cache, RedisBackend
from scalekit.errors import CacheBackendError

# a loopback port nobody listens on: Redis is "down"
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    DEAD_PORT = s.getsockname()[1]


class CountingBreaker:
    """Any object with allow/record_success/record_failure works (scalekit.resilience fits)."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.failures = 0

    def allow(self) -> bool:
        return self.failures < self.threshold

    def record_success(self) -> None:
        self.failures = 0

    def record_failure(self, exc: BaseException) -> None:
        self.failures += 1


async def main() -> None:
    client = redis.Redis(port=DEAD_PORT, socket_connect_timeout=0.1)
    breaker = CountingBreaker(threshold=3)
    cache = Cache(
        RedisBackend(client, timeout=0.2), namespace="orders", default_ttl=60, breaker=breaker
    )

    async def load_order() -> dict[str, int]:
        return {"id": 7}

    started = time.monotonic()
    assert await cache.get("order:7") is None  # a miss, not an exception
    assert await cache.set("order:7", {"id": 7}) is False  # a no-op
    assert await cache.get_or_load("order:7", load_order) == {"id": 7}  # the loader serves
    for _ in range(10):
        await cache.get("order:7")  # the breaker is open: Redis is not even tried
    assert time.monotonic() - started < 5

    stats = cache.stats()
    print(f"backend errors {stats.backend_errors}, skipped by breaker {stats.breaker_rejections}")
    assert stats.backend_errors == 3
    assert stats.breaker_rejections == 11

    strict = Cache(RedisBackend(client, timeout=0.2), namespace="orders", strict=True)
    try:
        await strict.get("order:7")
    except CacheBackendError as exc:
        print("strict mode:", exc)
    else:
        raise AssertionError("strict mode should raise")
    await client.aclose()


asyncio.run(main())
