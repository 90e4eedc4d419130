# requires: postgres
"""Sharded asyncpg pools: writes by key, scatter-gather with a per-shard timeout, a shard down.

Four schemas of one database stand in for four shard servers; one shard is reached through a
FaultProxy so the example can take it down.
"""

import asyncio
import os
from urllib.parse import urlsplit

import asyncpg

from scalekit.errors import ShardUnavailableError
from scalekit.sharding import ShardedDatabase
from scalekit.testing import FaultProxy

DSN = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
PREFIX = os.environ.get("SCALEKIT_EXAMPLE_PREFIX", "example")


async def main() -> None:
    target = urlsplit(DSN)
    proxy = await FaultProxy(target.hostname or "127.0.0.1", target.port or 5432).start()
    proxied = DSN.replace(f"{target.hostname}:{target.port}", f"127.0.0.1:{proxy.port}")
    schemas = {f"s{i}": f"{PREFIX}_shard{i}" for i in range(4)}
    admin = await asyncpg.connect(DSN)
    pools = {}
    try:
        for name, schema in schemas.items():
            await admin.execute(f'CREATE SCHEMA "{schema}"')
            await admin.execute(
                f'CREATE TABLE "{schema}".orders (id bigint PRIMARY KEY, customer text, total int)'
            )
            pools[name] = await asyncpg.create_pool(
                proxied if name == "s3" else DSN,
                min_size=0,
                max_size=2,
                server_settings={"search_path": schema},
            )
        db = ShardedDatabase(pools, timeout=2.0)  # JumpHash over s0..s3

        # Every order of a customer lives on the customer's shard.
        for i in range(100):
            customer = f"customer-{i % 25}"
            await db.for_key(customer).execute(
                "INSERT INTO orders VALUES ($1, $2, $3)", i, customer, i * 10
            )
        mine = await db.for_key("customer-7").fetch(
            "SELECT id FROM orders WHERE customer = $1", "customer-7"
        )
        assert len(mine) == 4

        # Scatter-gather: every shard, two at a time, each with its own timeout.
        result = await db.scatter("SELECT count(*) FROM orders", method="fetchval", concurrency=2)
        assert result.complete
        assert sum(result.results.values()) == 100

        # Shard s3 goes down: its keys fail with a clear error, the others keep working,
        # and a scatter says exactly which part of the answer is missing.
        await proxy.refuse()
        await proxy.cut()
        down = next(
            f"customer-{i}" for i in range(25) if db.router.shard_for(f"customer-{i}") == "s3"
        )
        up = next(
            f"customer-{i}" for i in range(25) if db.router.shard_for(f"customer-{i}") != "s3"
        )
        try:
            await db.for_key(down).fetch("SELECT 1")
        except ShardUnavailableError as exc:
            print("as expected:", exc)
        else:
            raise AssertionError("a down shard must fail its keys")
        assert await db.for_key(up).fetchval("SELECT count(*) FROM orders") > 0
        partial = await db.scatter("SELECT id FROM orders", timeout=1.0)
        assert set(partial.errors) == {"s3"}
        rows = partial.rows(allow_partial=True)  # explicit: we accept an incomplete answer
        assert 0 < len(rows) < 100
        print(partial, len(rows), "rows from the shards that answered")
    finally:
        await proxy.aclose()
        for pool in pools.values():
            pool.terminate()
        for schema in schemas.values():
            await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()


asyncio.run(main())
