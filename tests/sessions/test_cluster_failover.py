"""Sessions on a Redis Cluster that fails over: nothing acknowledged is lost, nothing resurrects."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode

from scalekit.errors import SessionStoreUnavailableError
from scalekit.sessions import RedisSessionBackend, SessionStore
from tests.sessions.conftest import SERVER_KEY
from tests.support.processes import RedisFailoverCluster

pytestmark = pytest.mark.redis_cluster


@pytest.fixture
async def store(redis_failover_cluster: RedisFailoverCluster) -> AsyncIterator[SessionStore]:
    nodes = [ClusterNode(h, p) for h, p in redis_failover_cluster.startup_nodes]
    client: Any = aioredis.RedisCluster(startup_nodes=nodes)
    await client.initialize()
    try:
        yield SessionStore(
            RedisSessionBackend(client), secret_key=SERVER_KEY, key_prefix="fo:", timeout=0.5
        )
    finally:
        await client.aclose()


async def test_sessions_survive_failovers_and_logouts_stay_logged_out(
    redis_failover_cluster: RedisFailoverCluster, store: SessionStore
) -> None:
    alive = await store.create({"cart": [1, 2]}, user_id="ada")
    gone = await store.create({"cart": []}, user_id="ada")
    assert gone.id is not None
    await store.destroy(gone)
    redis_failover_cluster.sync()
    redis_failover_cluster.failover()
    assert alive.id is not None
    loaded = await store.load(alive.id)
    assert loaded is not None
    assert loaded["cart"] == [1, 2]
    loaded["cart"] = [1, 2, 3]
    await store.save(loaded)
    assert await store.load(gone.id) is None

    redis_failover_cluster.sync()
    dead = redis_failover_cluster.kill_primary()
    with pytest.raises(SessionStoreUnavailableError):  # fail fast with a clear error
        await store.load(alive.id)
    redis_failover_cluster.promote(dead)
    for _ in range(200):  # the client finds the new primary after a few refused attempts
        try:
            loaded = await store.load(alive.id)
            break
        except SessionStoreUnavailableError:
            continue
    assert loaded is not None
    assert loaded["cart"] == [1, 2, 3]
    assert await store.load(gone.id) is None
    assert await store.destroy_all_for_user("ada") == 1
