# requires: postgres, postgres_replica
"""Read/write splitting with read-your-writes, a token across services, and bounded staleness."""

from __future__ import annotations

import asyncio
import os

from scalekit.db import Database

PRIMARY = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REPLICA = os.environ.get("DATABASE_REPLICA_URL", "postgresql://postgres@127.0.0.1:5433/test")
TABLE = os.environ.get("SCALEKIT_EXAMPLE_PREFIX", "example") + "_orders"
SECRET = os.environ.get("CONSISTENCY_SECRET", "change-me-32-random-bytes-please")


async def place_order(db: Database, order_id: int) -> str:
    """Service A: write, read it back at once, and hand out a consistency token."""
    await db.execute(f"INSERT INTO {TABLE} (id, status) VALUES ($1, 'placed')", order_id)
    # Same scope: this read goes to a replica only if it has replayed the INSERT, else to the
    # primary. Never stale, and no fixed "stick to the primary for 2 s" window.
    assert await db.fetchval(f"SELECT status FROM {TABLE} WHERE id = $1", order_id) == "placed"
    return db.consistency_token()  # put it in a cookie, a header or a job payload


async def order_status(db: Database, token: str, order_id: int) -> str:
    """Service B (another process, another Database): honour service A's token."""
    async with db.consistent_with(token):
        status: str = await db.fetchval(f"SELECT status FROM {TABLE} WHERE id = $1", order_id)
        return status


async def main() -> None:
    async with (
        Database(PRIMARY, [REPLICA], token_secret=SECRET) as service_a,
        Database(PRIMARY, [REPLICA], token_secret=SECRET) as service_b,
    ):
        await service_a.primary.execute(
            f"CREATE TABLE {TABLE} (id int PRIMARY KEY, status text NOT NULL)"
        )
        try:
            # each call runs in its own task: its own context, so its own consistency scope
            token = await asyncio.create_task(place_order(service_a, 1))
            status = await asyncio.create_task(order_status(service_b, token, 1))
            assert status == "placed"

            # Bounded staleness: a dashboard can accept data up to 30 s old, from a replica
            # whose last measured lag plus the age of that measurement is under 30 s.
            count = await service_b.fetchval(f"SELECT count(*) FROM {TABLE}", max_lag=30.0)
            assert count in (0, 1)

            # Transactions run on the primary; read-only ones may use a replica.
            async with service_a.transaction() as conn:
                await conn.execute(f"UPDATE {TABLE} SET status = 'paid' WHERE id = 1")
            async with service_a.transaction(readonly=True) as conn:
                assert await conn.fetchval(f"SELECT status FROM {TABLE} WHERE id = 1") == "paid"

            print("replicas:", service_a.replica_status())
        finally:
            await service_a.primary.execute(f"DROP TABLE IF EXISTS {TABLE}")


if __name__ == "__main__":
    asyncio.run(main())
