"""Replica outages (refused, cut, hung) through a FaultProxy, and primary failover."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import pytest

from scalekit.db import Database
from scalekit.errors import PrimaryNotFoundError, ReadOnlyPrimaryError
from scalekit.testing import FaultProxy
from tests.db.conftest import eventually

pytestmark = [pytest.mark.postgres, pytest.mark.postgres_replica]

IN_RECOVERY = "SELECT pg_is_in_recovery()"


def _dsn(port: int) -> str:
    return f"postgresql://postgres@127.0.0.1:{port}/test"


async def test_replica_down_means_zero_failed_reads_and_readmission(
    postgres_dsn: str,
) -> None:
    async with (
        FaultProxy("127.0.0.1", 5433) as proxy,
        Database(
            postgres_dsn,
            [_dsn(proxy.port)],
            check_interval=0.05,
            check_timeout=1.0,
            connect_timeout=1.0,
            readmit_after=2,
            max_fallback_reads=16,  # above the 8 readers: the cap must not shed any of them
        ) as db,
    ):
        served = {True: 0, False: 0}
        failures: list[BaseException] = []
        stop = asyncio.Event()

        async def reader() -> None:
            while not stop.is_set():
                try:
                    served[
                        await db.fetchval("SELECT pg_is_in_recovery() FROM pg_sleep(0.005)")
                    ] += 1
                except Exception as exc:  # any failed read fails the test
                    failures.append(exc)
                    await asyncio.sleep(0.01)

        readers = [asyncio.create_task(reader()) for _ in range(8)]
        try:
            await eventually(lambda: _true(served[True] > 20), what="replica reads")
            await proxy.refuse()  # the replica is "stopped": no new connections...
            await proxy.cut()  # ...and the open ones (some mid-query) are reset
            await eventually(
                lambda: _true(not db.replica_status()[0].available), what="replica ejection"
            )
            before = served[False]
            await eventually(lambda: _true(served[False] > before + 20), what="primary reads")
            await proxy.restore()
            await eventually(
                lambda: _true(db.replica_status()[0].available), what="replica readmission"
            )
            back = served[True]
            await eventually(lambda: _true(served[True] > back + 20), what="replica reads again")
        finally:
            stop.set()
            await asyncio.gather(*readers)
        assert failures == []


async def test_hung_replica_leaves_rotation(postgres_dsn: str) -> None:
    async with (
        FaultProxy("127.0.0.1", 5433) as proxy,
        Database(postgres_dsn, [_dsn(proxy.port)], check_interval=0.05, check_timeout=0.2) as db,
    ):
        assert await db.fetchval(IN_RECOVERY) is True
        proxy.blackhole()
        await eventually(lambda: _true(not db.replica_status()[0].available), what="ejection")
        assert await asyncio.wait_for(db.fetchval(IN_RECOVERY), 5) is False
        await proxy.cut()
        await proxy.restore()
        await eventually(lambda: _true(db.replica_status()[0].available), what="readmission")


async def test_replica_unreachable_at_startup_joins_later(postgres_dsn: str) -> None:
    async with FaultProxy("127.0.0.1", 5433) as proxy:
        await proxy.refuse()
        async with Database(
            postgres_dsn, [_dsn(proxy.port)], check_interval=0.05, connect_timeout=1.0
        ) as db:
            status = db.replica_status()[0]
            assert not status.available
            assert status.reason is not None
            assert "unreachable" in status.reason
            assert await db.fetchval(IN_RECOVERY) is False
            await proxy.restore()
            await eventually(lambda: _true(db.replica_status()[0].available), what="join")
            assert await db.fetchval(IN_RECOVERY) is True


@pytest.mark.xdist_group("replica_replay")
async def test_lagging_replica_leaves_rotation_and_returns(
    postgres_dsn: str, postgres_replica_dsn: str, table: str, paused_replay: object
) -> None:
    async with Database(
        postgres_dsn, [postgres_replica_dsn], max_lag=0.2, check_interval=0.05, readmit_after=2
    ) as db:
        async with paused_replay():  # type: ignore[operator]
            for i in range(3):
                await db.primary.execute(f"INSERT INTO {table} VALUES ($1, 'x')", i)
                await asyncio.sleep(0.1)
            await eventually(
                lambda: _true(not db.replica_status()[0].available), what="lag ejection"
            )
            assert "max_lag" in (db.replica_status()[0].reason or "")
            async with db.consistency_scope():
                assert await db.fetchval(IN_RECOVERY) is False
        await eventually(lambda: _true(db.replica_status()[0].available), what="readmission")


async def test_write_on_a_demoted_primary_rediscovers_and_is_retryable(
    postgres_dsn: str, table: str
) -> None:
    # two candidates behind proxies; swapping their targets simulates a failover
    async with (
        FaultProxy("127.0.0.1", 5432) as first,
        FaultProxy("127.0.0.1", 5433) as second,
        Database([_dsn(first.port), _dsn(second.port)], min_size=1, max_size=2) as db,
    ):
        assert str(first.port) in db.primary_name
        await db.execute(f"INSERT INTO {table} VALUES (1, 'before')")
        first.target_port, second.target_port = 5433, 5432
        await db._primary.pool.expire_connections()  # type: ignore[union-attr]
        with pytest.raises(ReadOnlyPrimaryError, match="retry the write"):
            await db.execute(f"INSERT INTO {table} VALUES (2, 'lost')")
        await db.execute(f"INSERT INTO {table} VALUES (2, 'after')")  # the retry succeeds
        assert str(second.port) in db.primary_name
        assert await db.primary.fetchval(f"SELECT v FROM {table} WHERE id = 2") == "after"


async def test_no_writable_candidate_raises_primary_not_found(postgres_replica_dsn: str) -> None:
    async with FaultProxy("127.0.0.1", 5432) as down:
        await down.refuse()
        secret = f"postgresql://postgres:hunter2hunter2@127.0.0.1:{down.port}/test"
        with pytest.raises(PrimaryNotFoundError) as info:
            await Database([secret, postgres_replica_dsn], connect_timeout=1.0).open()
    message = str(info.value)
    assert "hunter2" not in message
    assert "read-only" in message


async def test_connection_cut_mid_write_passes_the_driver_error_through(
    postgres_dsn: str, table: str
) -> None:
    async with (
        FaultProxy("127.0.0.1", 5432) as proxy,
        Database(_dsn(proxy.port), min_size=1, max_size=1) as db,
    ):
        write = asyncio.create_task(
            db.execute(f"INSERT INTO {table} SELECT 1, 'x' FROM pg_sleep(1)")
        )
        watcher = await asyncpg.connect(postgres_dsn)
        try:  # cut once the server is running the write, not after a guessed delay

            async def running() -> bool:
                return bool(
                    await watcher.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                        "AND query LIKE $1",
                        f"INSERT INTO {table}%",
                    )
                )

            await eventually(running, what="the write to run on the server")
        finally:
            await watcher.close()
        await proxy.cut()
        with pytest.raises(Exception) as info:
            await write
        assert not isinstance(info.value, AssertionError)

        # the pool recovers on its own: the next write works
        async def works() -> bool:
            with contextlib.suppress(Exception):
                await db.execute(f"INSERT INTO {table} VALUES (2, 'y')")
                return True
            return False

        await eventually(works, what="a write after the cut")


async def _true(value: bool) -> bool:
    return value


async def test_a_promoted_replica_leaves_rotation(postgres_dsn: str) -> None:
    async with (
        FaultProxy("127.0.0.1", 5433) as proxy,
        Database(postgres_dsn, [_dsn(proxy.port)], check_interval=0.05, readmit_after=1) as db,
    ):
        proxy.target_port = 5432  # the address now leads to a server that is not in recovery
        await proxy.cut()
        await eventually(lambda: _true(not db.replica_status()[0].available), what="removal")
        assert "not in recovery" in (db.replica_status()[0].reason or "")
        assert await db.fetchval(IN_RECOVERY) is False
        proxy.target_port = 5433
        await proxy.cut()
        await eventually(lambda: _true(db.replica_status()[0].available), what="readmission")
