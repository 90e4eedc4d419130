"""ShardedDatabase against four real PostgreSQL shard databases, with faults injected."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from scalekit.errors import (
    ConfigurationError,
    ShardMovedError,
    ShardTimeoutError,
    ShardUnavailableError,
    UnknownShardError,
)
from scalekit.sharding import (
    DirectoryStrategy,
    JumpHash,
    MemoryDirectoryStore,
    RegionStrategy,
    ShardedDatabase,
    ShardRouter,
)
from scalekit.testing import FaultProxy

pytestmark = pytest.mark.postgres


def via(proxy: FaultProxy, dsn: str) -> str:
    parts = urlsplit(dsn)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"{proxy.host}:{proxy.port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


@pytest.fixture
async def db(shard_pools: dict[str, object], orders_table: str) -> AsyncIterator[ShardedDatabase]:
    return ShardedDatabase(shard_pools, timeout=10.0)


async def insert(db: ShardedDatabase, table: str, order_id: int, customer: str) -> None:
    await db.for_key(customer).execute(
        f'INSERT INTO "{table}" (id, customer, amount) VALUES ($1, $2, $3)',
        order_id,
        customer,
        order_id * 10,
    )


async def test_rows_land_on_the_shard_that_owns_their_key(
    db: ShardedDatabase, orders_table: str, shard_pools: dict[str, asyncpg.Pool]
) -> None:
    customers = [f"customer-{i}" for i in range(40)]
    for i, customer in enumerate(customers):
        await insert(db, orders_table, i, customer)
    for name, pool in shard_pools.items():
        rows = await pool.fetch(f'SELECT customer FROM "{orders_table}"')
        assert {r["customer"] for r in rows} == {
            c for c in customers if db.router.shard_for(c) == name
        }
    row = await db.for_key("customer-7").fetchrow(
        f'SELECT amount FROM "{orders_table}" WHERE customer = $1', "customer-7"
    )
    assert row["amount"] == 70
    assert await db.for_key("customer-7").shard() == db.router.shard_for("customer-7")
    assert len({db.router.shard_for(c) for c in customers}) == 4


async def test_scatter_returns_every_shards_rows(db: ShardedDatabase, orders_table: str) -> None:
    for i in range(20):
        await insert(db, orders_table, i, f"c{i}")
    result = await db.scatter(f'SELECT id FROM "{orders_table}"', concurrency=2)
    assert result.complete
    assert not result.errors
    assert sorted(r["id"] for r in result.rows()) == list(range(20))
    counts = await db.scatter(f'SELECT count(*) FROM "{orders_table}"', method="fetchval")
    assert sum(counts.results.values()) == 20
    assert sorted(counts.rows()) == sorted(counts.results.values())
    assert all(outcome.ok for outcome in counts.values())


async def test_sql_errors_pass_through_for_key_and_are_reported_by_scatter(
    db: ShardedDatabase,
) -> None:
    with pytest.raises(asyncpg.UndefinedTableError):
        await db.for_key(1).fetch("SELECT * FROM no_such_table_here")
    result = await db.scatter("SELECT * FROM no_such_table_here")
    assert set(result.errors) == set(db.shards)
    assert all(isinstance(e, asyncpg.UndefinedTableError) for e in result.errors.values())
    with pytest.raises(ExceptionGroup) as info:
        result.rows()
    assert info.group_contains(asyncpg.UndefinedTableError)


async def test_bad_configuration_is_refused(shard_pools: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError, match="no pool"):
        ShardedDatabase({"s0": shard_pools["s0"]}, ShardRouter(shard_pools))
    with pytest.raises(ConfigurationError):
        ShardedDatabase(shard_pools, timeout=0)
    db = ShardedDatabase(shard_pools)
    with pytest.raises(ConfigurationError):
        await db.scatter("SELECT 1", method="drop_everything")
    with pytest.raises(ConfigurationError):
        await db.scatter("SELECT 1", concurrency=0)
    with pytest.raises(UnknownShardError):
        await db.scatter("SELECT 1", shards=["nope"])


async def test_stale_session_raises_shard_moved_for_a_moved_key(
    shard_pools: dict[str, object],
) -> None:
    three = {k: shard_pools[k] for k in ("s0", "s1", "s2")}
    router = ShardRouter(three, epoch=1)
    db = ShardedDatabase(shard_pools, router)
    grown = router.evolve(shard_pools)
    moved = next(k for k in range(1000) if router.shard_for(k) != grown.shard_for(k))
    stayed = next(k for k in range(1000) if router.shard_for(k) == grown.shard_for(k))
    moved_session, stayed_session = db.for_key(moved), db.for_key(stayed)
    assert await moved_session.fetchval("SELECT 1") == 1  # routes and pins at epoch 1
    assert await stayed_session.fetchval("SELECT 1") == 1
    db.router = grown
    with pytest.raises(ShardMovedError) as info:
        await moved_session.fetchval("SELECT 1")
    assert info.value.shard == grown.shard_for(moved)
    assert info.value.current_epoch == 2
    assert await stayed_session.fetchval("SELECT 1") == 1
    assert await db.for_key(moved).fetchval("SELECT 1") == 1  # a fresh session is fine


@pytest.fixture
async def proxied(
    shard_dsns: dict[str, str], orders_table: str
) -> AsyncIterator[tuple[ShardedDatabase, dict[str, FaultProxy]]]:
    """The four shards, each behind its own FaultProxy."""
    target = urlsplit(shard_dsns["s0"])
    proxies = {
        name: await FaultProxy(target.hostname or "127.0.0.1", target.port or 5432).start()
        for name in shard_dsns
    }
    db = await ShardedDatabase.from_dsns(
        {name: via(proxies[name], dsn) for name, dsn in shard_dsns.items()},
        timeout=5.0,
        max_size=3,
    )
    try:
        yield db, proxies
    finally:
        for proxy in proxies.values():
            await proxy.restore()
        await db.aclose()
        for proxy in proxies.values():
            await proxy.aclose()


async def test_a_down_shard_fails_only_its_keys(
    proxied: tuple[ShardedDatabase, dict[str, FaultProxy]], orders_table: str
) -> None:
    db, proxies = proxied
    keys = [f"k{i}" for i in range(60)]
    for i, key in enumerate(keys):
        await insert(db, orders_table, i, key)
    await proxies["s2"].refuse()
    await proxies["s2"].cut()  # open connections die too: the shard is gone
    for key in keys:
        session = db.for_key(key)
        query = f'SELECT count(*) FROM "{orders_table}" WHERE customer = $1'
        if db.router.shard_for(key) == "s2":
            with pytest.raises(ShardUnavailableError, match="'s2'"):
                await session.fetchval(query, key)
        else:
            assert await session.fetchval(query, key) == 1
    result = await db.scatter(f'SELECT id FROM "{orders_table}"')
    assert not result.complete
    assert set(result.errors) == {"s2"}
    assert isinstance(result.errors["s2"], ShardUnavailableError)
    assert "password" not in str(result.errors["s2"]).lower()
    with pytest.raises(ExceptionGroup):
        result.rows()
    partial = result.rows(allow_partial=True)
    assert len(partial) == sum(1 for k in keys if db.router.shard_for(k) != "s2")
    await proxies["s2"].restore()
    back = await db.scatter(f'SELECT id FROM "{orders_table}"')
    assert back.complete
    assert len(back.rows()) == 60


async def test_a_hung_shard_times_out_alone_in_scatter(
    proxied: tuple[ShardedDatabase, dict[str, FaultProxy]], orders_table: str
) -> None:
    db, proxies = proxied
    for i in range(20):
        await insert(db, orders_table, i, f"c{i}")
    await db.scatter("SELECT 1")  # warm a connection on every shard
    proxies["s1"].blackhole()
    result = await db.scatter(f'SELECT id FROM "{orders_table}"', timeout=0.5)
    assert set(result.errors) == {"s1"}
    error = result.errors["s1"]
    assert isinstance(error, ShardTimeoutError)
    assert isinstance(error, TimeoutError)
    assert isinstance(error, ShardUnavailableError)
    assert result["s0"].ok
    assert result["s1"].elapsed >= 0.5
    await proxies["s1"].restore()
    healed = await db.scatter(f'SELECT count(*) FROM "{orders_table}"', method="fetchval")
    assert healed.complete
    assert sum(healed.results.values()) == 20


async def test_a_slow_shard_within_its_timeout_still_answers(
    proxied: tuple[ShardedDatabase, dict[str, FaultProxy]],
) -> None:
    db, proxies = proxied
    proxies["s3"].latency = 0.05
    result = await db.scatter("SELECT 1", method="fetchval", timeout=5.0)
    assert result.complete
    proxies["s3"].latency = 0.0


async def test_a_connection_cut_mid_query_fails_that_shard_and_recovers(
    proxied: tuple[ShardedDatabase, dict[str, FaultProxy]], shard_dsns: dict[str, str]
) -> None:
    db, proxies = proxied
    key = next(k for k in range(1000) if db.router.shard_for(k) == "s0")
    marker = f"SELECT pg_sleep(5) AS cut_{id(db)}"
    task = asyncio.ensure_future(db.for_key(key).fetchval(marker))
    observer = await asyncpg.connect(shard_dsns["s0"])
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while not await observer.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE query = $1", marker
        ):
            assert asyncio.get_running_loop().time() < deadline, "query never started"
            await asyncio.sleep(0.01)
    finally:
        await observer.close()
    await proxies["s0"].cut()
    with pytest.raises(ShardUnavailableError):
        await task
    assert await db.for_key(key).fetchval("SELECT 2") == 2


async def test_from_dsns_starts_with_a_shard_down(
    shard_dsns: dict[str, str],
) -> None:
    target = urlsplit(shard_dsns["s0"])
    proxy = await FaultProxy(target.hostname or "127.0.0.1", target.port or 5432).start()
    await proxy.refuse()
    dsns = dict(shard_dsns)
    dsns["s3"] = via(proxy, shard_dsns["s3"])
    async with await ShardedDatabase.from_dsns(dsns, timeout=5.0) as db:
        result = await db.scatter("SELECT 1", method="fetchval")
        assert set(result.errors) == {"s3"}
    await proxy.aclose()


async def test_region_routing_fails_closed_when_a_region_shard_is_down(
    proxied: tuple[ShardedDatabase, dict[str, FaultProxy]],
) -> None:
    db, proxies = proxied
    db.router = ShardRouter(
        {name: db.pool(name) for name in db.shards},
        RegionStrategy({"eu": ["s0", "s1"], "us": ["s2", "s3"]}),
        epoch=1,
    )
    await proxies["s2"].refuse()
    await proxies["s2"].cut()
    served: Counter[str] = Counter()
    for i in range(60):
        key = ("us", f"user:{i}")
        owner = db.router.shard_for(key)
        assert owner in {"s2", "s3"}
        if owner == "s2":
            with pytest.raises(ShardUnavailableError, match="'s2'"):
                await db.for_key(key).fetchval("SELECT current_database()")
        else:
            served[await db.for_key(key).fetchval("SELECT current_database()")] += 1
        eu = ("eu", f"user:{i}")
        served[await db.for_key(eu).fetchval("SELECT current_database()")] += 1
    # Nothing was answered by s2's database, and US keys were never sent to an EU shard.
    assert not any(name.endswith("_s2") for name in served)
    with pytest.raises(UnknownShardError):
        await db.for_key(("ap", 1)).fetchval("SELECT 1")


async def test_directory_routed_database_resolves_keys_asynchronously(
    shard_pools: dict[str, object],
) -> None:
    directory = DirectoryStrategy(MemoryDirectoryStore({"megacorp": "s3"}))
    db = ShardedDatabase(shard_pools, directory)
    assert await db.for_key("{megacorp}:order:1").shard() == "s3"
    assert (await db.for_key("megacorp").fetchval("SELECT current_database()")).endswith("_s3")
    default = JumpHash().bind(list(shard_pools))("tiny")
    assert await db.for_key("tiny").shard() == default
    # Reassigning the tenant under a new router makes a session that routed it stale.
    session = db.for_key("megacorp")
    assert await session.fetchval("SELECT 1") == 1
    moved = DirectoryStrategy(MemoryDirectoryStore({"megacorp": "s0"}))
    db.router = ShardRouter(shard_pools, moved, epoch=1)
    with pytest.raises(ShardMovedError) as info:
        await session.fetchval("SELECT 1")
    assert info.value.shard == "s0"
    assert await db.for_key("megacorp").shard() == "s0"


async def test_aclose_does_not_hang_on_a_hung_shard(shard_dsns: dict[str, str]) -> None:
    target = urlsplit(shard_dsns["s0"])
    proxy = await FaultProxy(target.hostname or "127.0.0.1", target.port or 5432).start()
    try:
        dsns = {**shard_dsns, "s1": via(proxy, shard_dsns["s1"])}
        db = await ShardedDatabase.from_dsns(dsns, timeout=0.5)
        await db.scatter("SELECT 1")  # a connection open on every shard
        proxy.blackhole()
        async with asyncio.timeout(10):  # a guard against hanging forever, not a timing check
            await db.aclose()
    finally:
        await proxy.aclose()


async def test_transaction_commits_and_rolls_back(db: ShardedDatabase, orders_table: str) -> None:
    session = db.for_key("cust-a")
    insert = f'INSERT INTO "{orders_table}" VALUES ($1, $2, 10)'
    async with session.transaction() as conn:
        await conn.execute(insert, 1, "cust-a")

    async def duplicate() -> None:
        async with session.transaction() as conn:
            await conn.execute(insert, 2, "cust-a")
            await conn.execute(insert, 1, "cust-a")

    with pytest.raises(asyncpg.UniqueViolationError):
        await duplicate()
    query = f'SELECT id FROM "{orders_table}" ORDER BY id'
    assert [r["id"] for r in await session.fetch(query)] == [1]


async def test_transaction_on_a_hung_shard_times_out_instead_of_hanging(
    proxied: tuple[ShardedDatabase, dict[str, FaultProxy]], orders_table: str
) -> None:
    db, proxies = proxied
    key = next(f"k{i}" for i in range(1000) if db.router.shard_for(f"k{i}") == "s1")
    insert = f'INSERT INTO "{orders_table}" VALUES ($1, $2, 1)'

    async def hang_midway() -> None:
        async with db.for_key(key).transaction(timeout=0.5) as conn:
            await conn.execute(insert, 7, key)
            proxies["s1"].blackhole()
            await conn.execute(insert, 8, key)

    with pytest.raises(ShardTimeoutError, match="did not finish within"):
        await hang_midway()
    await proxies["s1"].restore()
    # Nothing was committed, and the hung connection was closed rather than reused.
    assert await db.for_key(key).fetchval(f'SELECT count(*) FROM "{orders_table}"') == 0


async def test_scatter_with_one_shard_down_one_hung_and_one_slow(
    proxied: tuple[ShardedDatabase, dict[str, FaultProxy]],
) -> None:
    db, proxies = proxied
    await db.scatter("SELECT 1")  # warm connections everywhere
    await proxies["s2"].refuse()
    await proxies["s2"].cut()
    proxies["s1"].blackhole()
    proxies["s3"].latency = 0.05
    result = await db.scatter(
        "SELECT current_database()", method="fetchval", concurrency=2, timeout=1.0
    )
    assert sorted(result.results) == ["s0", "s3"]
    assert isinstance(result.errors["s2"], ShardUnavailableError)
    assert not isinstance(result.errors["s2"], ShardTimeoutError)
    assert isinstance(result.errors["s1"], ShardTimeoutError)
    assert result.results["s3"].endswith("_s3")
    proxies["s3"].latency = 0.0
