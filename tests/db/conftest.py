"""Fixtures for the db tests: a unique table replicated to the replica, and replay control."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import asyncpg
import pytest

from tests.support.polling import eventually

__all__ = ["eventually"]

SECRET = "test-secret-of-at-least-16-bytes"


@pytest.fixture
async def table(postgres_dsn: str, postgres_replica_dsn: str, unique: str) -> AsyncIterator[str]:
    """A table ``(id int primary key, v text)`` on the primary, replicated to the replica."""
    name = unique
    primary = await asyncpg.connect(postgres_dsn)
    replica = await asyncpg.connect(postgres_replica_dsn)
    try:
        await primary.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v text NOT NULL)")

        async def replicated() -> bool:
            return bool(await replica.fetchval("SELECT to_regclass($1) IS NOT NULL", name))

        await eventually(replicated, what="the table to reach the replica")
        yield name
    finally:
        await primary.execute(f"DROP TABLE IF EXISTS {name}")
        await primary.close()
        await replica.close()


# Every test that pauses replay holds this advisory lock on the primary while paused. The
# xdist_group("replica_replay") mark should serialize them, but pytest-xdist 3.8's loadgroup does
# not group under pytest 9 (it sets Item._nodeid, which pytest 9 no longer reads), and other
# suites on the machine may pause replay too: the lock serializes them across processes.
REPLAY_LOCK = 0x5CA1E_0007


@pytest.fixture
def paused_replay(postgres_dsn: str, postgres_replica_dsn: str) -> Callable[[], object]:
    """``async with paused_replay():`` pauses WAL replay on the replica, ALWAYS resuming it."""

    @asynccontextmanager
    async def pause() -> AsyncIterator[Callable[[], Awaitable[None]]]:
        lock = await asyncpg.connect(postgres_dsn)
        try:
            await lock.execute("SELECT pg_advisory_lock($1)", REPLAY_LOCK)
            async with _paused(postgres_replica_dsn) as resume:
                yield resume
        finally:
            await lock.close()  # closing the session releases the lock

    return pause


@asynccontextmanager
async def _paused(postgres_replica_dsn: str) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    conn = await asyncpg.connect(postgres_replica_dsn)
    resumed = False

    async def resume() -> None:
        nonlocal resumed
        await conn.execute("SELECT pg_wal_replay_resume()")
        resumed = True

    try:
        await conn.execute("SELECT pg_wal_replay_pause()")

        async def paused() -> bool:
            state = await conn.fetchval("SELECT pg_get_wal_replay_pause_state()")
            return state in ("paused", "pause requested")  # both stop the next record

        await eventually(paused, what="replay to pause")
        yield resume
    finally:
        try:
            if not resumed:
                await conn.execute("SELECT pg_wal_replay_resume()")
        finally:
            await conn.close()
