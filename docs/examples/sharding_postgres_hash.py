# requires: postgres
"""Route keys to the partition PostgreSQL's PARTITION BY HASH picks, then split one partition."""

from __future__ import annotations

import asyncio
import os

import asyncpg

from scalekit.sharding import PostgresHash, ShardRouter

DSN = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
SCHEMA = os.environ.get("SCALEKIT_EXAMPLE_PREFIX", "example") + "_pghash"


async def main() -> None:
    conn = await asyncpg.connect(DSN)
    await conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA}")
    await conn.execute(f"SET search_path TO {SCHEMA}")
    try:
        # A table hash-partitioned by (tenant, id), four ways.
        await conn.execute(
            "CREATE TABLE orders (tenant text, id bigint) PARTITION BY HASH (tenant, id)"
        )
        for r in range(4):
            await conn.execute(
                f"CREATE TABLE orders_{r} PARTITION OF orders "
                f"FOR VALUES WITH (MODULUS 4, REMAINDER {r})"
            )

        # Shard i is REMAINDER i of MODULUS 4: the router knows each row's partition
        # without asking the server (or, with one database per shard, where PgDog puts it).
        router = ShardRouter(
            dict.fromkeys(f"orders_{r}" for r in range(4)), PostgresHash("text", "bigint")
        )
        rows = [(f"tenant-{i % 7}", i) for i in range(1000)]
        await conn.executemany("INSERT INTO orders VALUES ($1, $2)", rows)
        stored = await conn.fetch("SELECT tenant, id, tableoid::regclass::text AS p FROM orders")
        assert all(router.shard_for((r["tenant"], r["id"])) == r["p"] for r in stored)

        # Split orders_2 the PostgreSQL way: (4, 2) becomes (8, 2) and a new (8, 6).
        bounds = {f"orders_{r}": (4, r) for r in (0, 1, 3)}
        bounds |= {"orders_2": (8, 2), "orders_6": (8, 6)}
        split = router.evolve(
            dict.fromkeys(bounds), strategy=PostgresHash("text", "bigint", bounds=bounds)
        )
        plan = router.plan(split, keys=rows)
        assert {(m.source, m.target) for m in plan.moves} == {("orders_2", "orders_6")}
        assert plan.moved_fraction is not None
        assert 0.05 < plan.moved_fraction < 0.2  # half of one quarter: about 1/8
    finally:
        await conn.execute(f"DROP SCHEMA {SCHEMA} CASCADE")
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
