"""Read-your-writes by WAL position, with replay paused on the real replica."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from scalekit.db import ConsistencyMiddleware, Database
from scalekit.errors import InvalidConsistencyTokenError
from tests.db.conftest import SECRET, eventually

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.postgres_replica,
    pytest.mark.xdist_group("replica_replay"),
]

READ = "SELECT v, pg_is_in_recovery() FROM {} WHERE id = $1"


async def test_a_thousand_write_then_read_pairs_are_never_stale(
    postgres_dsn: str, postgres_replica_dsn: str, table: str, paused_replay: Callable[[], Any]
) -> None:
    replica = await asyncpg.connect(postgres_replica_dsn)
    async with Database(
        postgres_dsn, [postgres_replica_dsn], read_your_writes_timeout=0.0, max_size=4
    ) as db:
        served: list[bool] = []
        async with paused_replay() as resume:
            for i in range(1000):
                if i == 500:
                    still_paused = await replica.fetchval("SELECT pg_is_wal_replay_paused()")
                    await resume()  # the second half races a replica replaying live
                await db.execute(f"INSERT INTO {table} VALUES ($1, $2)", i, f"v{i}")
                row = await db.fetchrow(READ.format(table), i)
                assert row is not None, f"stale read after write {i}"
                assert row["v"] == f"v{i}"
                served.append(row[1])
        if still_paused:  # (another session on this machine may resume replay)
            assert not any(served[:500]), "a paused replica cannot have served these reads"

        # once it has caught up, reads in the same scope return to the replica
        async def on_replica() -> bool:
            row = await db.fetchrow(READ.format(table), 999)
            return row is not None and row[1] is True

        await eventually(on_replica, what="reads to return to the replica")
    await replica.close()


async def test_other_scopes_are_not_pinned_to_the_primary(
    postgres_dsn: str, postgres_replica_dsn: str, table: str, paused_replay: Callable[[], Any]
) -> None:
    async with (
        Database(postgres_dsn, [postgres_replica_dsn], read_your_writes_timeout=0.0) as db,
        paused_replay(),
    ):

        async def writer() -> Any:
            await db.execute(f"INSERT INTO {table} VALUES (1, 'w')")
            return await db.fetchrow(READ.format(table), 1)

        async def bystander() -> Any:
            return await db.fetchrow(READ.format(table), 1)

        mine = await asyncio.create_task(writer())
        other = await asyncio.create_task(bystander())  # its own context: no writes
        assert mine["v"] == "w"
        assert mine[1] is False
        assert other is None  # eventual consistency, served by the (paused) replica


async def test_a_read_waits_a_bounded_time_for_the_replica(
    postgres_dsn: str, postgres_replica_dsn: str, table: str, paused_replay: Callable[[], Any]
) -> None:
    async with Database(postgres_dsn, [postgres_replica_dsn], read_your_writes_timeout=10.0) as db:
        async with paused_replay() as resume:
            await db.execute(f"INSERT INTO {table} VALUES (1, 'w')")
            read = asyncio.create_task(db.fetchrow(READ.format(table), 1))
            await asyncio.sleep(0.05)
            assert not read.done()  # waiting for the replica, not reading the primary
            await resume()
            row = await read
        assert row["v"] == "w"
        assert row[1] is True  # served by the replica once it replayed the write


async def test_token_carries_writes_across_two_database_objects(
    postgres_dsn: str, postgres_replica_dsn: str, table: str, paused_replay: Callable[[], Any]
) -> None:
    async with (
        Database(postgres_dsn, [postgres_replica_dsn], token_secret=SECRET) as service_a,
        Database(
            postgres_dsn,
            [postgres_replica_dsn],
            token_secret=SECRET,
            read_your_writes_timeout=0.0,
        ) as service_b,
        paused_replay(),
    ):

        async def request_a() -> str:
            await service_a.execute(f"INSERT INTO {table} VALUES (1, 'from a')")
            return service_a.consistency_token()

        token = await asyncio.create_task(request_a())
        assert isinstance(token, str)

        async def request_b(token: str | None) -> Any:
            async with service_b.consistent_with(token):
                return await service_b.fetchrow(READ.format(table), 1)

        assert await asyncio.create_task(request_b(None)) is None  # stale without the token
        row = await asyncio.create_task(request_b(token))
        assert row["v"] == "from a"
        with pytest.raises(InvalidConsistencyTokenError):
            service_b.consistent_with(token[:-2] + ("AA" if token[-2:] != "AA" else "BB"))


async def test_asgi_middleware_scopes_requests_and_returns_a_token(
    postgres_dsn: str, postgres_replica_dsn: str, table: str, paused_replay: Callable[[], Any]
) -> None:
    async with Database(
        postgres_dsn, [postgres_replica_dsn], token_secret=SECRET, read_your_writes_timeout=0.0
    ) as db:

        async def write(request: Request) -> JSONResponse:
            await db.execute(f"INSERT INTO {table} VALUES (1, 'posted')")
            return JSONResponse({"ok": True})

        async def read(request: Request) -> JSONResponse:
            row = await db.fetchrow(READ.format(table), 1)
            return JSONResponse({"v": row["v"] if row else None})

        app = ConsistencyMiddleware(
            Starlette(routes=[Route("/w", write, methods=["POST"]), Route("/r", read)]),
            db=db,
            cookie="ryw",
        )
        transport = httpx.ASGITransport(app=app)
        async with paused_replay():
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                posted = await client.post("/w")
                token = posted.headers["x-consistency-token"]
                assert "ryw=" in posted.headers["set-cookie"]
                assert (await client.get("/r", headers={"x-consistency-token": token})).json() == {
                    "v": "posted"
                }
                # the cookie set by the POST works as well
                assert (await client.get("/r")).json() == {"v": "posted"}
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as fresh:
                assert (await fresh.get("/r")).json() == {"v": None}  # no token: a replica
                forged = await fresh.get("/r", headers={"x-consistency-token": "x" * 34})
                assert forged.status_code == 200  # a bad token is ignored, never a 500
                assert "x-consistency-token" not in forged.headers  # reads add no token
