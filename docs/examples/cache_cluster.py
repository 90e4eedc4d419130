# requires: redis_cluster
"""The same Cache on Redis Cluster: multi-key calls are pipelined per node."""

import asyncio
import os

from redis.asyncio.cluster import ClusterNode, RedisCluster

from scalekit.cache import Cache, RedisBackend

NODES = os.environ.get("REDIS_CLUSTER_NODES", "127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002")
PREFIX = os.environ.get("SCALEKIT_EXAMPLE_PREFIX", "example")


async def main() -> None:
    startup = [ClusterNode(h, int(p)) for h, p in (n.rsplit(":", 1) for n in NODES.split(","))]
    client = RedisCluster(startup_nodes=startup)
    cache = Cache(RedisBackend(client), namespace=f"{PREFIX}:products", default_ttl=300)

    products = {f"p{i}": {"id": i} for i in range(100)}  # keys over many hash slots
    assert await cache.set_many(products, tags=["catalog"])
    assert await cache.get_many(products) == products  # one pipeline, one round trip per node
    assert await cache.invalidate_tags(["catalog"]) == 100
    assert await cache.get_many(products) == {}

    await cache.clear()  # SCAN on every primary
    await client.aclose()


asyncio.run(main())
