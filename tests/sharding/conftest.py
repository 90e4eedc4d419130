"""Four real shard databases on the local PostgreSQL server, created once per session."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

SHARDS = ("s0", "s1", "s2", "s3")


def _with_db(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


async def _admin(dsn: str, statements: list[str]) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def shard_dsns(postgres_dsn: str) -> Iterator[dict[str, str]]:
    """Shard name -> DSN of a fresh database (unique name, dropped at the end of the session)."""
    prefix = f"sk_shard_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    names = {shard: f"{prefix}_{shard}" for shard in SHARDS}
    asyncio.run(_admin(postgres_dsn, [f'CREATE DATABASE "{db}"' for db in names.values()]))
    try:
        yield {shard: _with_db(postgres_dsn, db) for shard, db in names.items()}
    finally:
        asyncio.run(
            _admin(
                postgres_dsn,
                [f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)' for db in names.values()],
            )
        )


@pytest.fixture
async def shard_pools(shard_dsns: dict[str, str]) -> AsyncIterator[dict[str, object]]:
    """One small asyncpg pool per shard database."""
    import asyncpg

    pools = {
        name: await asyncpg.create_pool(dsn, min_size=0, max_size=4)
        for name, dsn in shard_dsns.items()
    }
    try:
        yield pools
    finally:
        await asyncio.gather(*(p.close() for p in pools.values()))


@pytest.fixture
async def orders_table(shard_pools: dict[str, object], unique: str) -> AsyncIterator[str]:
    """A fresh ``orders`` table (unique name) on every shard."""
    table = f"orders_{unique}"
    ddl = (
        f'CREATE TABLE "{table}" (id bigint PRIMARY KEY, customer text NOT NULL, '
        "amount integer NOT NULL, note text)"
    )
    await asyncio.gather(*(p.execute(ddl) for p in shard_pools.values()))  # type: ignore[attr-defined]
    try:
        yield table
    finally:
        await asyncio.gather(
            *(p.execute(f'DROP TABLE IF EXISTS "{table}"') for p in shard_pools.values())  # type: ignore[attr-defined]
        )
