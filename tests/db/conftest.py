"""Fixtures for the db tests: a unique table replicated to the replica, and replay control."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import asyncpg
import pytest

SECRET = "test-secret-of-at-least-16-bytes"


async def eventually(
    predicate: Callable[[], Awaitable[bool]], *, timeout: float = 15.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` until it is true, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def table(postgres_dsn: str, postgres_replica_dsn: str, unique: str) -> AsyncIterator[str]:
    """A table ``(id int primary key, v text)`` created on the primary and visible on the replica."""
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


@pytest.fixture
def paused_replay(postgres_replica_dsn: str) -> Callable[[], object]:
    """``async with paused_replay():`` pauses WAL replay on the replica, ALWAYS resuming it."""

    @asynccontextmanager
    async def pause() -> AsyncIterator[Callable[[], Awaitable[None]]]:
        conn = await asyncpg.connect(postgres_replica_dsn)
        resumed = False

        async def resume() -> None:
            nonlocal resumed
            await conn.execute("SELECT pg_wal_replay_resume()")
            resumed = True

        try:
            await conn.execute("SELECT pg_wal_replay_pause()")
            yield resume
        finally:
            try:
                if not resumed:
                    await conn.execute("SELECT pg_wal_replay_resume()")
            finally:
                await conn.close()

    return pause
