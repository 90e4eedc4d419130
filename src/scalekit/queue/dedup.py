"""Idempotent consumers: remember processed message ids so a redelivery is not processed twice.

Two stores:

* :class:`RedisDedupStore`: ``SET NX`` with a lease while a message is processed and a TTL once
  it is done; works for any handler.
* :class:`PostgresInbox`: an inbox table written in the handler's *own* transaction, so "the
  effect happened" and "the message was processed" commit or roll back together (exactly-once
  effects in PostgreSQL).
"""

from __future__ import annotations

import enum
import functools
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from scalekit.clock import SYSTEM_CLOCK, Clock
from scalekit.errors import ConfigurationError
from scalekit.queue._message import Message

if TYPE_CHECKING:
    import asyncpg
    import redis.asyncio

__all__ = ["Claim", "DedupStore", "MemoryDedupStore", "PostgresInbox", "RedisDedupStore"]

T = TypeVar("T")


class Claim(enum.Enum):
    """The answer of :meth:`DedupStore.claim`."""

    NEW = "new"
    """Nobody processed this message: process it, then ``complete`` (or ``release``)."""
    DONE = "done"
    """Already processed: ack without running the handler."""
    BUSY = "busy"
    """Another consumer is processing a copy right now: try again later."""


class DedupStore(Protocol):
    """Where a consumer records message ids it processed."""

    async def claim(self, key: str, token: str) -> Claim:
        """Try to take ``key`` for processing under ``token``."""
        ...

    async def complete(self, key: str, token: str) -> None:
        """Mark ``key`` processed (remembered for the store's TTL)."""
        ...

    async def release(self, key: str, token: str) -> None:
        """Give up a claim after a failure so a retry can process the message."""
        ...


_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisDedupStore:
    """Processed-message memory in Redis.

    ``claim`` is one ``SET key processing:<token> NX PX lease``; ``complete`` overwrites it with
    ``done`` for ``ttl`` seconds; ``release`` deletes it only if the claim is still ours (Lua).
    A consumer that dies mid-message leaves the claim to expire after ``lease`` seconds, so keep
    ``lease`` above your slowest handler.

    Args:
        client: a ``redis.asyncio.Redis`` client (you own its lifetime).
        prefix: key prefix.
        ttl: seconds a processed id is remembered (longer than any redelivery can take).
        lease: seconds a claim holds while the handler runs.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        prefix: str = "scalekit:dedup:",
        ttl: float = 7 * 24 * 3600,
        lease: float = 300.0,
    ) -> None:
        if ttl <= 0 or lease <= 0:
            raise ConfigurationError("ttl and lease must be positive seconds")
        self._redis = client
        self._prefix = prefix
        self._ttl_ms = int(ttl * 1000)
        self._lease_ms = int(lease * 1000)
        self._release = client.register_script(_RELEASE)

    async def claim(self, key: str, token: str) -> Claim:
        """``SET NX`` a processing claim; report DONE or BUSY when the key exists."""
        k = self._prefix + key
        if await self._redis.set(k, f"processing:{token}", nx=True, px=self._lease_ms):
            return Claim.NEW
        value = await self._redis.get(k)
        if value is None:  # expired between the two calls
            return await self.claim(key, token)
        text = value.decode() if isinstance(value, bytes) else str(value)
        return Claim.DONE if text == "done" else Claim.BUSY

    async def complete(self, key: str, token: str) -> None:
        """Remember ``key`` as processed for ``ttl``."""
        await self._redis.set(self._prefix + key, "done", px=self._ttl_ms)

    async def release(self, key: str, token: str) -> None:
        """Delete our claim (a retry may then process the message)."""
        await self._release(keys=[self._prefix + key], args=[f"processing:{token}"])


class MemoryDedupStore:
    """A process-local :class:`DedupStore` for tests (same semantics as Redis, no sharing).

    Args:
        ttl: seconds a processed id is remembered.
        lease: seconds a claim holds.
        clock: the clock for both.
    """

    def __init__(
        self, *, ttl: float = 3600.0, lease: float = 300.0, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self._ttl = ttl
        self._lease = lease
        self._clock = clock
        self._entries: dict[str, tuple[str, float]] = {}

    async def claim(self, key: str, token: str) -> Claim:
        """Take ``key`` unless it is processed or claimed by someone else."""
        now = self._clock.monotonic()
        entry = self._entries.get(key)
        if entry is not None and entry[1] > now:
            return Claim.DONE if entry[0] == "done" else Claim.BUSY
        self._entries[key] = (token, now + self._lease)
        return Claim.NEW

    async def complete(self, key: str, token: str) -> None:
        """Remember ``key`` as processed."""
        self._entries[key] = ("done", self._clock.monotonic() + self._ttl)

    async def release(self, key: str, token: str) -> None:
        """Drop our claim."""
        entry = self._entries.get(key)
        if entry is not None and entry[0] == token:
            del self._entries[key]


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$")


class PostgresInbox:
    """An inbox table written in the handler's own transaction (exactly-once effects).

    Wrap a handler that takes ``(message, connection)`` with :meth:`idempotent`: the wrapper
    opens a transaction, inserts ``(consumer, message_id)``, and runs the handler on the same
    connection only if the row is new. The handler's writes and the inbox row commit together;
    a failure rolls both back, so the retry runs again. A concurrent duplicate waits on the
    unique key and then sees the row.

    Args:
        pool: an ``asyncpg`` pool (you own it).
        table: the inbox table (``schema.table`` allowed).
        consumer: a name for this consumer, so several consumers of one message each process it.
    """

    def __init__(
        self, pool: asyncpg.Pool, *, table: str = "scalekit_inbox", consumer: str = "default"
    ) -> None:
        if not _IDENT.match(table):
            raise ConfigurationError(f"invalid table name {table!r}")
        self._pool = pool
        self.table = table
        self.consumer = consumer

    async def create_table(self) -> None:
        """Create the inbox table if it does not exist."""
        await self._pool.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table} ("
            " consumer text NOT NULL, message_id text NOT NULL,"
            " processed_at timestamptz NOT NULL DEFAULT now(),"
            " PRIMARY KEY (consumer, message_id))"
        )

    async def purge(self, older_than_seconds: float) -> int:
        """Delete rows older than ``older_than_seconds``; returns how many."""
        status = await self._pool.execute(
            f"DELETE FROM {self.table} WHERE processed_at < now() - make_interval(secs => $1)",
            older_than_seconds,
        )
        return int(status.split()[-1])

    def idempotent(
        self, handler: Callable[[Message[T], asyncpg.Connection], Awaitable[None]]
    ) -> Callable[[Message[T]], Awaitable[None]]:
        """Turn ``handler(message, conn)`` into a consumer handler that runs once per message."""
        sql = (
            f"INSERT INTO {self.table} (consumer, message_id) VALUES ($1, $2) "
            "ON CONFLICT DO NOTHING RETURNING 1"
        )

        @functools.wraps(handler)
        async def wrapper(message: Message[T]) -> None:
            async with self._pool.acquire() as conn, conn.transaction():
                inserted: Any = await conn.fetchval(sql, self.consumer, message.message_id)
                if inserted is None:
                    return  # processed before: the transaction has nothing to commit
                await handler(message, conn)

        return wrapper


def new_token() -> str:
    """A random claim token."""
    return uuid.uuid4().hex
