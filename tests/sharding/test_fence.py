"""The write fence: PostgreSQL itself refuses writes routed by a stale router, in any process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from scalekit.errors import ShardMovedError
from scalekit.sharding import MigratingRouter, MigrationPhase, ShardedDatabase, ShardRouter

pytestmark = pytest.mark.postgres


@pytest.fixture(autouse=True)
async def lowered_fence(shard_pools: dict[str, Any]) -> AsyncIterator[None]:
    """The fence is per shard database: start and end every test with it down."""

    async def lower() -> None:
        for pool in shard_pools.values():
            await pool.execute(
                "DO $$ BEGIN IF to_regclass('scalekit_shard_fence') IS NOT NULL THEN "
                "UPDATE scalekit_shard_fence SET epoch = 0; END IF; END $$"
            )

    await lower()
    yield
    await lower()


async def test_a_stale_process_cannot_write_after_the_fence_is_raised(
    shard_pools: dict[str, Any], orders_table: str
) -> None:
    old = ShardRouter(shard_pools, epoch=4)
    new = old.evolve()
    stale = ShardedDatabase(shard_pools, old, fenced=True)  # "process A", not yet updated
    fresh = ShardedDatabase(shard_pools, new, fenced=True)  # "process B", already updated
    await fresh.install_fence(orders_table)
    insert = f'INSERT INTO "{orders_table}" VALUES ($1, $2, 1)'
    await stale.for_key("c1").execute(insert, 1, "c1")  # no fence yet: accepted
    await fresh.raise_fence(new.epoch)

    with pytest.raises(ShardMovedError, match="refresh the router") as info:
        await stale.for_key("c1").execute(insert, 2, "c1")
    assert info.value.epoch == 4
    assert info.value.current_epoch == 5
    with pytest.raises(ShardMovedError):
        await stale.for_key("c1", write=True).fetchrow(insert + " RETURNING id", 3, "c1")

    async def stale_transaction() -> None:
        async with stale.for_key("c1").transaction() as conn:
            await conn.execute(insert, 4, "c1")

    with pytest.raises(ShardMovedError):
        await stale_transaction()
    # Reads are not fenced, the fresh process writes, and unfenced admin sessions still work.
    count = f'SELECT count(*) FROM "{orders_table}"'
    assert await stale.for_key("c1").fetchval(count) == 1
    await fresh.for_key("c1").execute(insert, 5, "c1")
    async with fresh.for_key("c1").transaction() as conn:
        await conn.execute(insert, 6, "c1")
    pool: asyncpg.Pool = shard_pools[new.shard_for("c1")]
    await pool.execute(insert, 7, "c1")
    assert sorted(r["id"] for r in await pool.fetch(f'SELECT id FROM "{orders_table}"')) == [
        1,
        5,
        6,
        7,
    ]
    await fresh.raise_fence(3)  # a fence never goes down
    with pytest.raises(ShardMovedError):
        await stale.for_key("c1").execute(insert, 8, "c1")


async def test_fence_catches_a_process_two_phases_behind_in_a_move(
    shard_pools: dict[str, Any], orders_table: str
) -> None:
    old = ShardRouter({k: shard_pools[k] for k in ("s0", "s1", "s2")}, epoch=1)
    new = old.evolve(shard_pools)
    behind = ShardedDatabase(
        shard_pools, MigratingRouter(old, new, MigrationPhase.VERIFY), fenced=True
    )
    ahead = ShardedDatabase(
        shard_pools, MigratingRouter(old, new, MigrationPhase.CUT_OVER), fenced=True
    )
    await ahead.install_fence(orders_table)
    # Entering CLEANUP: no process may still write the old copies the cleanup deletes.
    await ahead.raise_fence(new.epoch, shards=old.names)
    key = next(f"c{i}" for i in range(1000) if old.shard_for(f"c{i}") != new.shard_for(f"c{i}"))
    upsert = (
        f'INSERT INTO "{orders_table}" VALUES ($1, $2, 1) '
        "ON CONFLICT (id) DO UPDATE SET amount = EXCLUDED.amount"
    )
    with pytest.raises(ShardMovedError):
        await behind.for_key(key).execute(upsert, 1, key)
    await ahead.for_key(key).execute(upsert, 1, key)  # CUT_OVER writes new, then old
