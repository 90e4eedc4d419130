# requires: postgres
"""Grow from 3 to 4 shards online: dual write, backfill, verify, cut over, clean up.

Four schemas of one database stand in for four shard servers.
"""

import asyncio
import os

import asyncpg

from scalekit.sharding import (
    Backfill,
    MigratingRouter,
    MigrationPhase,
    ShardedDatabase,
    ShardRouter,
)

DSN = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
PREFIX = os.environ.get("SCALEKIT_EXAMPLE_PREFIX", "example")
UPSERT = (
    "INSERT INTO orders (id, customer, total) VALUES ($1, $2, $3) "
    "ON CONFLICT (id) DO UPDATE SET total = EXCLUDED.total"
)


async def main() -> None:
    schemas = {f"s{i}": f"{PREFIX}_move{i}" for i in range(4)}
    admin = await asyncpg.connect(DSN)
    pools = {}
    try:
        for name, schema in schemas.items():
            await admin.execute(f'CREATE SCHEMA "{schema}"')
            await admin.execute(
                f'CREATE TABLE "{schema}".orders (id bigint PRIMARY KEY, customer text, total int)'
            )
            pools[name] = await asyncpg.create_pool(
                DSN, min_size=0, max_size=3, server_settings={"search_path": schema}
            )

        # Today: three shards. Rows are routed by customer.
        old = ShardRouter({n: pools[n] for n in ("s0", "s1", "s2")}, epoch=1)
        db = ShardedDatabase(pools, old)
        for i in range(300):
            await db.for_key(f"c{i % 60}").execute(UPSERT, i, f"c{i % 60}", i)

        # 0. Plan: which customers move where (jump hash: ~1/4 of them, all to s3).
        new = old.evolve(pools)
        plan = old.plan(new, keys=[f"c{i}" for i in range(60)])
        print(plan.summary())

        # 1. DUAL_WRITE: writes of moving keys go to the old AND the new shard (upserts).
        db.router = MigratingRouter(old, new, MigrationPhase.DUAL_WRITE)
        await db.for_key("c1").execute(UPSERT, 1, "c1", 1001)

        # 2. BACKFILL: copy existing rows, in batches, resumably (checkpoint on the target).
        db.router = db.router.advance()
        backfills = [
            Backfill(db, source=s, target=t, table="orders", key_column="customer", batch_size=50)
            for s, t in sorted(plan.flows())
        ]
        for backfill in backfills:
            progress = await backfill.run()
            assert progress.done

        # 3. VERIFY: counts and checksums of the moving rows agree on both sides.
        db.router = db.router.advance()
        await db.for_key("c2").execute(UPSERT, 2, "c2", 2002)  # writes go on meanwhile
        for backfill in backfills:
            report = await backfill.verify()
            assert report.ok, report

        # 4. CUT_OVER: reads of moving keys now go to the new shard; the old one still gets
        #    writes, so you can roll back to VERIFY if something looks wrong.
        db.router = db.router.advance()
        assert db.router.phase is MigrationPhase.CUT_OVER

        # 5. CLEANUP: the new shard alone serves moving keys; delete the old copies.
        db.router = db.router.advance()
        deleted = sum([await b.cleanup() for b in backfills])
        print(f"deleted {deleted} moved rows from the old shards")

        # Done: route with the new router.
        db.router = new
        total = await db.scatter("SELECT count(*) FROM orders", method="fetchval")
        assert sum(total.results.values()) == 300
        assert await db.for_key("c1").fetchval("SELECT total FROM orders WHERE id = 1") == 1001
        assert await db.for_key("c2").fetchval("SELECT total FROM orders WHERE id = 2") == 2002
        for name, pool in pools.items():
            for row in await pool.fetch("SELECT customer FROM orders"):
                assert new.shard_for(row["customer"]) == name
    finally:
        for pool in pools.values():
            await pool.close()
        for schema in schemas.values():
            await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()


asyncio.run(main())
