"""Fixtures of the sessions tests: backends on real Redis and the Redis Cluster, a counting spy."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from scalekit.sessions import MemorySessionBackend, RedisSessionBackend, SessionStore
from scalekit.sessions.backend import Limits, SessionBackend, StoredSession, WriteResult
from scalekit.testing import ManualClock

SERVER_KEY = "server-key-for-tests-0123456789abcdef"
COOKIE_KEYS = ["cookie-key-new-0123456789abcdef", "cookie-key-old-0123456789abcdef"]


async def _purge(client: Any, prefix: str) -> None:
    keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=500)]
    for key in keys:
        await client.delete(key)


@pytest.fixture
async def redis_client(redis_url: str, unique: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, socket_timeout=2.0)
    yield client
    await _purge(client, unique)
    await client.aclose()


@pytest.fixture
async def cluster_client(
    redis_cluster_nodes: list[tuple[str, int]], unique: str
) -> AsyncIterator[RedisCluster]:
    client = RedisCluster(
        startup_nodes=[ClusterNode(h, p) for h, p in redis_cluster_nodes], socket_timeout=2.0
    )
    await client.initialize()
    yield client
    await _purge(client, unique)
    await client.aclose()


@pytest.fixture(params=["memory", "redis", "cluster"])
def backend(request: pytest.FixtureRequest) -> SessionBackend:
    """The same store tests run on every backend."""
    if request.param == "memory":
        return MemorySessionBackend()
    if request.param == "redis":
        request.applymarker(pytest.mark.redis)
        return RedisSessionBackend(request.getfixturevalue("redis_client"))
    request.applymarker(pytest.mark.redis_cluster)
    return RedisSessionBackend(request.getfixturevalue("cluster_client"))


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(wall_start=1_800_000_000.0)


@pytest.fixture
def make_store(
    backend: SessionBackend, unique: str, clock: ManualClock
) -> Callable[..., SessionStore]:
    """Stores sharing one backend, like app instances sharing one Redis."""

    def make(**kwargs: Any) -> SessionStore:
        kwargs.setdefault("secret_key", SERVER_KEY)
        kwargs.setdefault("key_prefix", f"{unique}:")
        kwargs.setdefault("clock", clock)
        return SessionStore(backend, **kwargs)

    return make


class SpyBackend:
    """Counts calls to another backend (to prove a request never reached the store)."""

    def __init__(self, inner: SessionBackend) -> None:
        self.inner = inner
        self.calls: list[str] = []

    async def load(self, key: str, limits: Limits) -> StoredSession | None:
        self.calls.append("load")
        return await self.inner.load(key, limits)

    async def create(
        self,
        key: str,
        fields: Mapping[str, str],
        limits: Limits,
        *,
        user_id: str | None = None,
        index_key: str | None = None,
    ) -> WriteResult:
        self.calls.append("create")
        return await self.inner.create(key, fields, limits, user_id=user_id, index_key=index_key)

    async def merge(
        self, key: str, set_fields: Mapping[str, str], delete_fields: Sequence[str], limits: Limits
    ) -> WriteResult:
        self.calls.append("merge")
        return await self.inner.merge(key, set_fields, delete_fields, limits)

    async def rotate(
        self,
        old_key: str,
        new_key: str,
        set_fields: Mapping[str, str],
        delete_fields: Sequence[str],
        limits: Limits,
        *,
        bind: tuple[str, str] | None = None,
    ) -> WriteResult:
        self.calls.append("rotate")
        return await self.inner.rotate(
            old_key, new_key, set_fields, delete_fields, limits, bind=bind
        )

    async def destroy(self, key: str) -> bool:
        self.calls.append("destroy")
        return await self.inner.destroy(key)

    async def destroy_index(self, index_key: str) -> int:
        self.calls.append("destroy_index")
        return await self.inner.destroy_index(index_key)

    async def count_index(self, index_key: str, limits: Limits) -> int:
        self.calls.append("count_index")
        return await self.inner.count_index(index_key, limits)

    async def aclose(self) -> None:
        await self.inner.aclose()
