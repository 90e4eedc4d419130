"""A full online move on four real shards: dual write, resumable backfill, verify, cut over,
clean up, with writes going on the whole time."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from scalekit.errors import ConfigurationError, ShardTimeoutError, ShardUnavailableError
from scalekit.sharding import (
    Backfill,
    MigratingRouter,
    MigrationPhase,
    ShardedDatabase,
    ShardRouter,
)
from scalekit.testing import FaultProxy

pytestmark = pytest.mark.postgres

CUSTOMERS = 120


def customer_of(order_id: int) -> str:
    return f"cust-{order_id % CUSTOMERS}"


class Writer:
    """Idempotent writes (upserts and deletes by id) through the database, mirrored in a model."""

    def __init__(self, db: ShardedDatabase, table: str, seed: int) -> None:
        self.db = db
        self.table = table
        self.rng = random.Random(seed)
        self.model: dict[int, int] = {}
        self.gate = asyncio.Lock()  # held by the test to change phase at a quiet point
        self.stop = asyncio.Event()
        self.writes = 0
        self.progress = asyncio.Condition()

    async def write_once(self) -> None:
        order_id = self.rng.randrange(1500)
        customer = customer_of(order_id)
        session = self.db.for_key(customer)
        if self.rng.random() < 0.75:
            amount = self.rng.randrange(1, 10_000)
            await session.execute(
                f'INSERT INTO "{self.table}" (id, customer, amount) VALUES ($1, $2, $3) '
                "ON CONFLICT (id) DO UPDATE SET amount = EXCLUDED.amount",
                order_id,
                customer,
                amount,
            )
            self.model[order_id] = amount
        else:
            await session.execute(f'DELETE FROM "{self.table}" WHERE id = $1', order_id)
            self.model.pop(order_id, None)
        self.writes += 1

    async def run(self) -> None:
        while not self.stop.is_set():
            async with self.gate:
                await self.write_once()
            async with self.progress:
                self.progress.notify_all()
            await asyncio.sleep(0)

    async def more(self, count: int) -> None:
        """Wait until the writer has made ``count`` more writes."""
        target = self.writes + count
        async with self.progress:
            await self.progress.wait_for(lambda: self.writes >= target)


@pytest.fixture
async def moving_db(
    shard_pools: dict[str, Any], orders_table: str
) -> tuple[ShardedDatabase, ShardRouter[Any], ShardRouter[Any]]:
    old = ShardRouter({k: shard_pools[k] for k in ("s0", "s1", "s2")}, epoch=1)
    new = old.evolve(shard_pools)
    return ShardedDatabase(shard_pools, old, timeout=20.0), old, new


async def snapshot(pool: asyncpg.Pool, table: str) -> dict[int, int]:
    rows = await pool.fetch(f'SELECT id, amount FROM "{table}"')
    return {r["id"]: r["amount"] for r in rows}


async def test_online_move_with_writes_going_on(
    moving_db: tuple[ShardedDatabase, ShardRouter[Any], ShardRouter[Any]],
    orders_table: str,
    shard_pools: dict[str, asyncpg.Pool],
) -> None:
    db, old, new = moving_db
    writer = Writer(db, orders_table, seed=7)
    for _ in range(800):  # existing data, written before the move starts
        await writer.write_once()

    async def enter(phase: MigrationPhase) -> MigratingRouter:
        async with writer.gate:  # every in-flight write finished: the phase is "acknowledged"
            router = MigratingRouter(old, new, phase)
            db.router = router
            return router

    migration = await enter(MigrationPhase.DUAL_WRITE)
    task = asyncio.ensure_future(writer.run())
    try:
        await writer.more(20)
        migration = await enter(MigrationPhase.BACKFILL)
        flows = old.plan(new, keys=[customer_of(i) for i in range(CUSTOMERS)]).flows()
        assert {target for _, target in flows} == {"s3"}
        pairs = sorted(flows)
        for source, target in pairs:
            first = Backfill(
                db,
                source=source,
                target=target,
                table=orders_table,
                key_column="customer",
                batch_size=40,
            )
            crashed = await first.run(max_batches=2)  # then the process "dies"
            assert crashed.scanned == 80
            assert not crashed.done
            await writer.more(20)  # writes keep landing while the copy is down
            resumed = Backfill(
                db,
                source=source,
                target=target,
                table=orders_table,
                key_column="customer",
                batch_size=40,
            )
            before = await resumed.progress()
            assert before.last_pk == crashed.last_pk
            assert before.copied == crashed.copied
            finished = await resumed.run()
            assert finished.done
            assert finished.scanned >= crashed.scanned

        migration = await enter(MigrationPhase.VERIFY)
        await writer.more(20)
        # Damage one copied row behind the router's back: verify must see and repair it.
        damaged = await shard_pools["s3"].fetchval(f'SELECT min(id) FROM "{orders_table}"')
        await shard_pools["s3"].execute(
            f'UPDATE "{orders_table}" SET amount = -1 WHERE id = $1', damaged
        )
        reports = []
        for source, target in pairs:
            backfill = Backfill(
                db, source=source, target=target, table=orders_table, key_column="customer"
            )
            for _ in range(5):
                report = await backfill.verify(repair=True)
                reports.append(report)
                if report.ok:
                    break
            else:
                pytest.fail(f"verify never came back clean: {report}")
        assert any(damaged in r.different for r in reports)

        migration = await enter(MigrationPhase.CUT_OVER)
        await writer.more(30)
        migration = await enter(MigrationPhase.CLEANUP)
        for source, target in pairs:
            deleted = await Backfill(
                db, source=source, target=target, table=orders_table, key_column="customer"
            ).cleanup()
            assert deleted > 0
        await writer.more(20)
    finally:
        writer.stop.set()
        await task
    assert writer.writes >= 800 + 20 * 5

    async with writer.gate:
        db.router = new
    # Every row is where the new router says, and nowhere else, with the latest value.
    union: dict[int, int] = {}
    for name, pool in shard_pools.items():
        rows = await snapshot(pool, orders_table)
        for order_id in rows:
            assert new.shard_for(customer_of(order_id)) == name, (order_id, name)
        assert not set(rows) & set(union)
        union.update(rows)
    assert union == writer.model
    assert migration.phase == MigrationPhase.CLEANUP


async def test_verify_reports_missing_extra_and_different_rows(
    moving_db: tuple[ShardedDatabase, ShardRouter[Any], ShardRouter[Any]],
    orders_table: str,
    shard_pools: dict[str, asyncpg.Pool],
) -> None:
    db, old, new = moving_db
    db.router = MigratingRouter(old, new, MigrationPhase.BACKFILL)
    writer = Writer(db, orders_table, seed=3)
    for _ in range(300):
        await writer.write_once()
    source = next(s for s, t in old.plan(new, keys=range(500)).flows())
    backfill = Backfill(
        db,
        source=source,
        target="s3",
        table=orders_table,
        key_column="customer",
        batch_size=25,
    )
    # Dual writes already copied everything: nothing is missing.
    assert (await backfill.verify()).ok
    moving_ids = sorted(
        i
        for i in (await snapshot(shard_pools[source], orders_table))
        if backfill.moves(customer_of(i))
    )
    assert moving_ids
    s3 = shard_pools["s3"]
    await s3.execute(f'DELETE FROM "{orders_table}" WHERE id = $1', moving_ids[0])
    await s3.execute(f'UPDATE "{orders_table}" SET amount = -5 WHERE id = $1', moving_ids[-1])
    ghost = next(i for i in range(2000, 3000) if backfill.moves(customer_of(i)))
    await s3.execute(
        f'INSERT INTO "{orders_table}" (id, customer, amount) VALUES ($1, $2, 1)',
        ghost,
        customer_of(ghost),
    )
    report = await backfill.verify()
    assert not report.ok
    assert report.missing == (moving_ids[0],)
    assert report.different == (moving_ids[-1],)
    assert report.extra == (ghost,)
    assert report.source_rows == len(moving_ids)
    assert report.source_checksum != report.target_checksum
    repaired = await backfill.verify(repair=True)
    assert repaired.repaired == 3
    clean = await backfill.verify()
    assert clean.ok
    assert clean.source_checksum == clean.target_checksum


async def test_backfill_refuses_unsafe_identifiers_and_missing_migration(
    moving_db: tuple[ShardedDatabase, ShardRouter[Any], ShardRouter[Any]],
) -> None:
    db, old, new = moving_db
    with pytest.raises(ConfigurationError, match="MigratingRouter"):
        Backfill(db, source="s0", target="s3", table="t", key_column="k")
    db.router = MigratingRouter(old, new)
    with pytest.raises(ConfigurationError, match="identifier"):
        Backfill(db, source="s0", target="s3", table='t"; DROP TABLE x; --', key_column="k")
    with pytest.raises(ConfigurationError, match="batch_size"):
        Backfill(db, source="s0", target="s3", table="t", key_column="k", batch_size=0)


@pytest.fixture
async def source_proxy(shard_dsns: dict[str, str]) -> AsyncIterator[tuple[FaultProxy, str]]:
    """A FaultProxy in front of the server, and shard s0's DSN through it."""
    target = urlsplit(shard_dsns["s0"])
    proxy = await FaultProxy(target.hostname or "127.0.0.1", target.port or 5432).start()
    user, _, _ = target.netloc.rpartition("@")
    dsn = urlunsplit(
        target._replace(
            netloc=f"{user}@127.0.0.1:{proxy.port}" if user else f"127.0.0.1:{proxy.port}"
        )
    )
    try:
        yield proxy, dsn
    finally:
        await proxy.aclose()


async def seed(db: ShardedDatabase, table: str, count: int) -> None:
    rows = [(i, customer_of(i), i) for i in range(count)]
    by_shard: dict[str, list[tuple[int, str, int]]] = {}
    for row in rows:
        by_shard.setdefault(db.router.shard_for(row[1]), []).append(row)
    for shard, batch in by_shard.items():
        await db.pool(shard).executemany(
            f'INSERT INTO "{table}" (id, customer, amount) VALUES ($1, $2, $3)', batch
        )


@pytest.mark.parametrize("fault", ["cut", "blackhole"])
async def test_backfill_interrupted_by_a_shard_fault_resumes_after_it(
    source_proxy: tuple[FaultProxy, str],
    shard_pools: dict[str, asyncpg.Pool],
    orders_table: str,
    fault: str,
) -> None:
    proxy, dsn = source_proxy
    source_pool = await asyncpg.create_pool(dsn, min_size=0, max_size=2)
    try:
        pools: dict[str, Any] = {**shard_pools, "s0": source_pool}
        old = ShardRouter({k: pools[k] for k in ("s0", "s1", "s2")}, epoch=1)
        new = old.evolve(pools)
        db = ShardedDatabase(pools, MigratingRouter(old, new, MigrationPhase.BACKFILL), timeout=2.0)
        await seed(ShardedDatabase(pools, old), orders_table, 1500)

        def make() -> Backfill:
            return Backfill(
                db,
                source="s0",
                target="s3",
                table=orders_table,
                key_column="customer",
                batch_size=20,
                batch_timeout=1.0,
            )

        first = await make().run(max_batches=3)
        assert first.scanned == 60
        task = asyncio.ensure_future(make().run())
        # Wait for the running copy to commit more batches, then break the source shard.
        deadline = asyncio.get_running_loop().time() + 20
        while (await make().progress()).scanned < 100:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.005)
        if fault == "cut":
            await proxy.refuse()
            await proxy.cut()
            expected: type[Exception] = ShardUnavailableError
        else:
            proxy.blackhole()
            expected = ShardTimeoutError
        with pytest.raises(expected, match="run it again to resume"):
            await task
        interrupted = await make().progress()
        assert not interrupted.done
        await proxy.restore()
        finished = await make().run()
        assert finished.done
        assert finished.scanned == sum(
            1 for i in range(1500) if old.shard_for(customer_of(i)) == "s0"
        )
        report = await make().verify()
        assert report.ok
        assert report.source_rows == finished.copied
    finally:
        source_pool.terminate()
