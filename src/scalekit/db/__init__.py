"""A read/write splitter over asyncpg: primary and replicas, lag-aware, read-your-writes.

::

    from scalekit.db import Database

    async with Database(primary=PRIMARY_DSN, replicas=[REPLICA_DSN]) as db:
        await db.execute("INSERT INTO items (name) VALUES ($1)", "x")  # primary
        rows = await db.fetch("SELECT name FROM items")  # a replica that has replayed the insert

asyncpg is imported when a :class:`Database` is constructed, never at import time.
"""

from __future__ import annotations

from scalekit.db._consistency import ConsistencyScope
from scalekit.db._replica import ReplicaStatus, Role
from scalekit.db.asgi import ConsistencyMiddleware
from scalekit.db.database import Database
from scalekit.db.handles import Handle, Transaction

__all__ = [
    "ConsistencyMiddleware",
    "ConsistencyScope",
    "Database",
    "Handle",
    "ReplicaStatus",
    "Role",
    "Transaction",
]
