"""Routing against the real primary (:5432) and streaming replica (:5433)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from scalekit.balance import RoundRobin
from scalekit.db import Database
from scalekit.errors import ConfigurationError, DatabaseError, NoReplicaAvailableError
from scalekit.testing import FaultProxy, ManualClock

pytestmark = [pytest.mark.postgres, pytest.mark.postgres_replica]

IN_RECOVERY = "SELECT pg_is_in_recovery()"


async def test_reads_go_to_the_replica_and_writes_to_the_primary(
    postgres_dsn: str, postgres_replica_dsn: str, table: str
) -> None:
    async with Database(postgres_dsn, [postgres_replica_dsn]) as db:
        assert await db.fetchval(IN_RECOVERY) is True
        assert (await db.fetchrow(IN_RECOVERY))[0] is True
        assert (await db.fetch(IN_RECOVERY))[0][0] is True
        assert await db.replica().fetchval(IN_RECOVERY) is True
        assert await db.primary.fetchval(IN_RECOVERY) is False
        assert await db.execute(f"INSERT INTO {table} VALUES (1, 'a')") == "INSERT 0 1"
        await db.executemany(f"INSERT INTO {table} VALUES ($1, $2)", [(2, "b"), (3, "c")])
        assert await db.fetchval(f"SELECT count(*) FROM {table}") == 3
        async with db.primary.acquire() as conn:
            assert await conn.fetchval(IN_RECOVERY) is False
        async with db.replica().acquire() as conn:
            assert await conn.fetchval(IN_RECOVERY) is True


async def test_without_replicas_everything_runs_on_the_primary(postgres_dsn: str) -> None:
    async with Database(postgres_dsn) as db:
        assert await db.fetchval(IN_RECOVERY) is False
        assert db.replica_status() == []


async def test_transaction_runs_on_the_primary_and_commits(
    postgres_dsn: str, postgres_replica_dsn: str, table: str
) -> None:
    async with Database(postgres_dsn, [postgres_replica_dsn]) as db:
        async with db.transaction() as conn:
            assert await conn.fetchval(IN_RECOVERY) is False
            await conn.execute(f"INSERT INTO {table} VALUES (1, 'a')")
        assert db.required_lsn > 0
        assert await db.fetchval(f"SELECT v FROM {table} WHERE id = 1") == "a"


async def test_transaction_rolls_back_on_error(
    postgres_dsn: str, postgres_replica_dsn: str, table: str
) -> None:
    async def abort(db: Database) -> None:
        async with db.transaction() as conn:
            await conn.execute(f"INSERT INTO {table} VALUES (1, 'a')")
            raise RuntimeError("abort")

    async with Database(postgres_dsn, [postgres_replica_dsn]) as db:
        with pytest.raises(RuntimeError):
            await abort(db)
        assert await db.primary.fetchval(f"SELECT count(*) FROM {table}") == 0


async def test_after_commit_runs_after_the_commit_in_order(
    postgres_dsn: str, postgres_replica_dsn: str, table: str
) -> None:
    seen: list[tuple[str, object]] = []
    async with Database(postgres_dsn, [postgres_replica_dsn]) as db:

        async def invalidate(key: str) -> None:
            # another connection already sees the row: the callback runs after the commit
            seen.append((key, await db.primary.fetchval(f"SELECT v FROM {table} WHERE id = 1")))

        async def publish(event: str) -> None:
            seen.append((event, None))

        tx = db.transaction()
        async with tx as conn:
            await conn.execute(f"INSERT INTO {table} VALUES (1, 'a')")
            tx.after_commit(invalidate, "user:1")
            tx.after_commit(publish, "user-created")
            assert seen == []  # nothing runs inside the transaction
        assert seen == [("user:1", "a"), ("user-created", None)]


async def test_after_commit_never_runs_after_a_rollback(
    postgres_dsn: str, postgres_replica_dsn: str, table: str
) -> None:
    ran: list[str] = []

    async def note(what: str) -> None:
        ran.append(what)

    async def abort(tx: Any) -> None:
        async with tx as conn:
            await conn.execute(f"INSERT INTO {table} VALUES (1, 'a')")
            tx.after_commit(note, "invalidate")
            raise RuntimeError("abort")

    async with Database(postgres_dsn, [postgres_replica_dsn]) as db:
        tx = db.transaction()
        with pytest.raises(RuntimeError):
            await abort(tx)
        assert ran == []
        with pytest.raises(TypeError, match="coroutine function"):
            tx.after_commit("not callable")  # type: ignore[arg-type]


async def test_a_failing_after_commit_callback_is_logged_and_the_rest_still_run(
    postgres_dsn: str, postgres_replica_dsn: str, table: str, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[str] = []

    async def broken() -> None:
        raise ConnectionError("cache down")

    async def note(what: str) -> None:
        ran.append(what)

    async with Database(postgres_dsn, [postgres_replica_dsn]) as db:
        tx = db.transaction()
        async with tx as conn:
            await conn.execute(f"INSERT INTO {table} VALUES (1, 'a')")
            tx.after_commit(broken)
            tx.after_commit(note, "published")
        # committed, so nothing is raised; the failure is in the log
        assert ran == ["published"]
        assert await db.primary.fetchval(f"SELECT count(*) FROM {table}") == 1
    assert "after_commit callback" in caplog.text
    assert "cache down" in caplog.text


async def test_readonly_transaction_may_use_a_replica(
    postgres_dsn: str, postgres_replica_dsn: str
) -> None:
    async with (
        Database(postgres_dsn, [postgres_replica_dsn]) as db,
        db.transaction(readonly=True, isolation="repeatable_read") as conn,
    ):
        assert await conn.fetchval(IN_RECOVERY) is True
        assert await conn.fetchval("SHOW transaction_read_only") == "on"


async def test_reads_spread_over_replicas_with_the_given_balancer(
    postgres_dsn: str, postgres_replica_dsn: str
) -> None:
    async with (
        FaultProxy("127.0.0.1", 5433) as p1,
        FaultProxy("127.0.0.1", 5433) as p2,
        Database(
            postgres_dsn,
            [_via(postgres_replica_dsn, p1.port), _via(postgres_replica_dsn, p2.port)],
            balancer=RoundRobin(panic_threshold=0),
            min_size=1,
        ) as db,
    ):
        assert all(s.available for s in db.replica_status())
        pids = [await db.fetchval("SELECT pg_backend_pid()") for _ in range(20)]
        # sequential reads use one pooled connection per replica, alternating
        assert len(set(pids)) == 2
        assert pids[0::2] == [pids[0]] * 10


async def test_bounded_staleness_per_read(postgres_dsn: str, postgres_replica_dsn: str) -> None:
    clock = ManualClock()
    async with Database(
        postgres_dsn, [postgres_replica_dsn], clock=clock, check_interval=3600
    ) as db:
        assert await db.fetchval(IN_RECOVERY, max_lag=5.0) is True
        clock.set(clock.monotonic() + 10.0)  # the last lag measurement is now 10 s old
        assert await db.fetchval(IN_RECOVERY) is True  # eventual consistency: still a replica
        assert await db.fetchval(IN_RECOVERY, max_lag=5.0) is False  # too stale: the primary
        assert await db.replica(max_lag=5.0).fetchval(IN_RECOVERY) is False
        assert await db.replica(max_lag=60.0).fetchval(IN_RECOVERY) is True
        await db.check_replicas()
        assert await db.fetchval(IN_RECOVERY, max_lag=5.0) is True


async def test_no_usable_replica_raises_when_fallback_is_off(postgres_dsn: str) -> None:
    async with FaultProxy("127.0.0.1", 5433) as proxy:
        await proxy.refuse()
        async with Database(
            postgres_dsn,
            [f"postgresql://postgres@127.0.0.1:{proxy.port}/test"],
            fallback_to_primary=False,
            connect_timeout=2.0,
        ) as db:
            assert db.replica_status()[0].available is False
            with pytest.raises(NoReplicaAvailableError, match="fallback_to_primary is off"):
                await db.fetchval("SELECT 1")
            assert await db.primary.fetchval("SELECT 1") == 1


async def test_fallback_reads_are_capped_to_protect_the_primary(postgres_dsn: str) -> None:
    async with FaultProxy("127.0.0.1", 5433) as proxy:
        await proxy.refuse()
        async with Database(
            postgres_dsn,
            [f"postgresql://postgres@127.0.0.1:{proxy.port}/test"],
            max_fallback_reads=2,
            connect_timeout=2.0,
        ) as db:
            results = await asyncio.gather(
                *(db.fetchval("SELECT 1 FROM pg_sleep(0.3)") for _ in range(4)),
                return_exceptions=True,
            )
            assert results.count(1) == 2
            shed = [r for r in results if isinstance(r, NoReplicaAvailableError)]
            assert len(shed) == 2
            assert "max_fallback_reads" in str(shed[0])
            assert await db.fetchval("SELECT 1") == 1  # the cap is on concurrency only


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (([],), {}),
        (("",), {}),
        (("postgresql://x",), {"replicas": "postgresql://y"}),
        (("postgresql://x",), {"max_lag": -1}),
        (("postgresql://x",), {"check_interval": 0}),
        (("postgresql://x",), {"readmit_after": 0}),
        (("postgresql://x",), {"min_size": 5, "max_size": 2}),
        (("postgresql://x",), {"balancer": RoundRobin(["a"])}),
        (("postgresql://x",), {"token_secret": "short"}),
    ],
)
def test_bad_arguments_are_rejected(args: tuple[object, ...], kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        Database(*args, **kwargs)  # type: ignore[arg-type]


def test_repr_and_status_redact_passwords() -> None:
    db = Database(
        "postgresql://app:s3cr3t@127.0.0.1:5432/test",
        ["postgresql://app:s3cr3t@127.0.0.1:5433/test"],
    )
    assert "s3cr3t" not in repr(db)
    assert "s3cr3t" not in db.primary_name
    assert "s3cr3t" not in str(db.replica_status())


def _via(dsn: str, port: int) -> str:
    return dsn.replace(":5433", f":{port}")


async def test_held_fallback_connections_count_against_the_cap(postgres_dsn: str) -> None:
    async with FaultProxy("127.0.0.1", 5433) as proxy:
        await proxy.refuse()
        async with Database(
            postgres_dsn,
            [f"postgresql://postgres@127.0.0.1:{proxy.port}/test"],
            max_fallback_reads=1,
            connect_timeout=2.0,
        ) as db:
            async with db.transaction(readonly=True) as conn:
                assert await conn.fetchval(IN_RECOVERY) is False
                with pytest.raises(NoReplicaAvailableError):
                    await db.fetchval("SELECT 1")
            async with db.replica().acquire() as conn:
                assert await conn.fetchval("SELECT 1") == 1
            assert await db.fetchval("SELECT 1") == 1  # released: the slot is free again


@pytest.mark.parametrize("max_lag", [-1.0, "5", float("nan")])
async def test_bad_per_read_max_lag_is_rejected(postgres_dsn: str, max_lag: object) -> None:
    async with Database(postgres_dsn) as db:
        with pytest.raises(ConfigurationError):
            await db.fetchval("SELECT 1", max_lag=max_lag)  # type: ignore[arg-type]


async def test_an_exhausted_pool_times_out_instead_of_waiting_forever(postgres_dsn: str) -> None:
    async with Database(postgres_dsn, min_size=1, max_size=1, acquire_timeout=0.2) as db:
        async with db.primary.acquire():
            with pytest.raises(TimeoutError):
                await db.fetchval("SELECT 1")
        assert await db.fetchval("SELECT 1") == 1
        results = await asyncio.gather(*(db.fetchval("SELECT 1") for _ in range(5)))
        assert results == [1] * 5  # queued callers are served as the connection frees up


async def test_using_a_database_that_is_not_open_is_a_clear_error(postgres_dsn: str) -> None:
    db = Database(postgres_dsn)
    with pytest.raises(DatabaseError, match="not open"):
        await db.fetchval("SELECT 1")


async def test_pgbouncer_switch_and_pool_options_pass_through(postgres_dsn: str) -> None:
    async with Database(postgres_dsn, pgbouncer=True, command_timeout=0.5) as db:
        assert await db.fetchval("SELECT $1::int", 7) == 7
        async with db.primary.acquire() as conn:
            assert conn._con._stmt_cache.get_max_size() == 0  # no named prepared statements
        with pytest.raises(TimeoutError):
            await db.fetchval("SELECT pg_sleep(5)")  # command_timeout reached the pool


async def test_p2c_steers_reads_away_from_a_slow_replica(postgres_dsn: str) -> None:
    async with (
        FaultProxy("127.0.0.1", 5433) as fast,
        FaultProxy("127.0.0.1", 5433, latency=0.02) as slow,
        Database(
            postgres_dsn,
            [_via("postgresql://postgres@127.0.0.1:5433/test", p.port) for p in (fast, slow)],
            min_size=1,
        ) as db,
    ):
        fast_pid = await db._replicas[0].pool.fetchval("SELECT pg_backend_pid()")  # type: ignore[union-attr]
        pids = [await db.fetchval("SELECT pg_backend_pid()") for _ in range(40)]
        assert pids.count(fast_pid) >= 35  # peak EWMA remembers the slow one's latency
