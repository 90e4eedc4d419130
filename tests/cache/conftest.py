"""Fixtures for the cache tests: real clients with unique namespaces, cleaned up after."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from scalekit.cache import Cache, RedisBackend


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def cluster_client(
    redis_cluster_nodes: list[tuple[str, int]],
) -> AsyncIterator[aioredis.RedisCluster]:
    host, port = redis_cluster_nodes[0]
    client = aioredis.RedisCluster(host=host, port=port)
    await client.initialize()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def redis_cache(redis_client: aioredis.Redis, unique: str) -> AsyncIterator[Cache]:
    cache = Cache(RedisBackend(redis_client), namespace=unique, default_ttl=60)
    try:
        yield cache
    finally:
        await cache.clear()
        await cache.aclose()


async def open_client(request: pytest.FixtureRequest, kind: str) -> Any:
    """A new client of the shared Redis (``"redis"``) or of the shared cluster (``"cluster"``)."""
    if kind == "redis":
        return aioredis.Redis.from_url(request.getfixturevalue("redis_url"))
    host, port = request.getfixturevalue("redis_cluster_nodes")[0]
    client = aioredis.RedisCluster(host=host, port=port)
    await client.initialize()
    return client
