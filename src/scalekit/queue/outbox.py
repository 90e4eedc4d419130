"""Transactional outbox on PostgreSQL: the database write and the message happen together.

``await outbox.add(conn, OutboxMessage(...))`` inserts a row in the caller's transaction; an
:class:`OutboxRelay` publishes committed rows with confirms and marks them sent. Rows with the
same ``key`` are published in insertion order (a relay only takes the oldest unsent row of a
key), several relays can run at once (``FOR UPDATE SKIP LOCKED``), and a relay wakes on
``LISTEN/NOTIFY`` with polling as the fallback. A relay that crashes between publishing and
marking a row sent publishes it again: at-least-once, with the same ``message_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from scalekit._telemetry import get_logger
from scalekit.clock import SYSTEM_CLOCK, Clock
from scalekit.errors import ConfigurationError
from scalekit.queue._broker import OutgoingMessage
from scalekit.queue._message import HEADER_SCHEMA_VERSION, encode_body, error_text, new_message_id
from scalekit.queue.producer import Producer

if TYPE_CHECKING:
    import asyncpg

__all__ = ["Outbox", "OutboxMessage", "OutboxRelay"]

log = get_logger(__name__)

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,40}(\.[A-Za-z_][A-Za-z0-9_]{0,40})?$")


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A message to publish once the surrounding transaction commits.

    Attributes:
        body: bytes or a JSON-serializable value (as for ``Producer.publish``).
        queue: the work queue (routing key) to publish to.
        key: messages with the same key are published in the order they were added
            (``None``: no ordering constraint).
        headers: extra headers.
        message_id: the id consumers deduplicate on (random when omitted).
    """

    body: object
    queue: str
    key: str | None = None
    headers: Mapping[str, Any] = field(default_factory=dict)
    message_id: str | None = None


class Outbox:
    """The outbox table: add messages inside your own transactions.

    Args:
        table: the table name (``schema.table`` allowed).
        max_message_bytes: the largest encoded body accepted.
        schema_version: the ``x-schema-version`` header written.
    """

    def __init__(
        self,
        *,
        table: str = "scalekit_outbox",
        max_message_bytes: int = 1024 * 1024,
        schema_version: str = "1",
    ) -> None:
        if not _IDENT.match(table):
            raise ConfigurationError(f"invalid outbox table name {table!r}")
        self.table = table
        self.channel = "scalekit_outbox_" + table.replace(".", "_")
        self.max_message_bytes = max_message_bytes
        self.schema_version = schema_version

    async def create_table(self, conn: asyncpg.Connection | asyncpg.Pool) -> None:
        """Create the table and its indexes if missing."""
        base = self.table.replace(".", "_")
        await conn.execute(
            f"""
            CREATE TABLE IF NOT EXISTS {self.table} (
                id bigserial PRIMARY KEY,
                message_id text NOT NULL,
                queue text NOT NULL,
                key text,
                body bytea NOT NULL,
                content_type text,
                headers jsonb NOT NULL DEFAULT '{{}}',
                created_at timestamptz NOT NULL DEFAULT now(),
                available_at timestamptz NOT NULL DEFAULT now(),
                attempts integer NOT NULL DEFAULT 0,
                last_error text,
                sent_at timestamptz
            );
            CREATE INDEX IF NOT EXISTS {base}_unsent ON {self.table} (id) WHERE sent_at IS NULL;
            CREATE INDEX IF NOT EXISTS {base}_key_unsent ON {self.table} (key, id)
                WHERE sent_at IS NULL;
            """
        )

    async def add(self, conn: asyncpg.Connection, message: OutboxMessage) -> str:
        """Insert ``message`` in ``conn``'s current transaction; returns its message id.

        Call it inside ``async with conn.transaction():`` next to your own writes: if the
        transaction rolls back, the message is never published.

        Raises:
            MessageTooLargeError: the body is over ``max_message_bytes``.
            TypeError: the body cannot be encoded.
        """
        data, content_type = encode_body(message.body, max_bytes=self.max_message_bytes)
        headers = dict(message.headers)
        headers.setdefault(HEADER_SCHEMA_VERSION, self.schema_version)
        message_id = message.message_id or new_message_id()
        await conn.execute(
            f"INSERT INTO {self.table} (message_id, queue, key, body, content_type, headers)"
            " VALUES ($1, $2, $3, $4, $5, $6::jsonb)",
            message_id,
            message.queue,
            message.key,
            data,
            content_type,
            json.dumps(headers, default=str),
        )
        # Delivered at commit only, so a relay never wakes for a row it cannot see yet.
        await conn.execute("SELECT pg_notify($1, '')", self.channel)
        return message_id

    async def pending(self, conn: asyncpg.Connection | asyncpg.Pool) -> int:
        """Rows not yet published."""
        return int(await conn.fetchval(f"SELECT count(*) FROM {self.table} WHERE sent_at IS NULL"))


class OutboxRelay:
    """Publish committed outbox rows with confirms; run one or several per database.

    Args:
        outbox: the :class:`Outbox` describing the table.
        pool: an ``asyncpg`` pool (you own it).
        producer: the producer that publishes (confirms, timeouts, republish on reconnect).
        batch_size: rows taken per transaction.
        poll_interval: seconds between polls when no notification arrives.
        retry_delay: seconds before a row whose publish failed is tried again (doubles per
            attempt, capped at 60 s); later rows with the same key wait for it.
        delete_sent: delete rows once published instead of setting ``sent_at``.
        clock: the clock for waits.
    """

    def __init__(
        self,
        outbox: Outbox,
        pool: asyncpg.Pool,
        producer: Producer,
        *,
        batch_size: int = 100,
        poll_interval: float = 1.0,
        retry_delay: float = 1.0,
        delete_sent: bool = False,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.outbox = outbox
        self.pool = pool
        self.producer = producer
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.retry_delay = retry_delay
        self.delete_sent = delete_sent
        self._clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listener: asyncpg.Connection | None = None
        self.published = 0
        """Rows this relay published."""
        t = outbox.table
        # Only the oldest unsent row of each key is eligible: with SKIP LOCKED alone, a second
        # relay would skip a locked head row and publish the next row of the same key first.
        self._select = f"""
            SELECT id, message_id, queue, body, content_type, headers, attempts
            FROM {t} o
            WHERE o.sent_at IS NULL AND o.available_at <= now()
              AND (o.key IS NULL OR NOT EXISTS (
                  SELECT 1 FROM {t} p
                  WHERE p.key = o.key AND p.sent_at IS NULL AND p.id < o.id))
            ORDER BY o.id
            LIMIT $1
            FOR UPDATE SKIP LOCKED
        """
        self._mark = (
            f"DELETE FROM {t} WHERE id = ANY($1::bigint[])"
            if delete_sent
            else f"UPDATE {t} SET sent_at = now() WHERE id = ANY($1::bigint[])"
        )
        self._fail = (
            f"UPDATE {t} SET attempts = attempts + 1, last_error = $2,"
            " available_at = now() + make_interval(secs => $3) WHERE id = $1"
        )

    async def relay_once(self) -> int:
        """Publish one batch; returns how many rows were published."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(self._select, self.batch_size)
            if not rows:
                return 0
            results = await asyncio.gather(
                *(self._publish(row) for row in rows), return_exceptions=True
            )
            sent = [row["id"] for row, res in zip(rows, results, strict=True) if res is None]
            for row, res in zip(rows, results, strict=True):
                if isinstance(res, BaseException):
                    if not isinstance(res, Exception):
                        raise res
                    delay = min(60.0, self.retry_delay * 2 ** min(int(row["attempts"]), 10))
                    log.warning("outbox row %s not published: %s", row["id"], res)
                    await conn.execute(self._fail, row["id"], error_text(res), delay)
            if sent:
                await conn.execute(self._mark, sent)
        self.published += len(sent)
        return len(sent)

    async def _publish(self, row: Any) -> None:
        headers = row["headers"]
        if isinstance(headers, str):
            headers = json.loads(headers)
        await self.producer.send(
            OutgoingMessage(
                routing_key=row["queue"],
                body=bytes(row["body"]),
                message_id=row["message_id"],
                headers=dict(headers),
                content_type=row["content_type"],
            )
        )

    async def drain(self) -> int:
        """Publish until no eligible row is left; returns how many were published."""
        total = 0
        while True:
            n = await self.relay_once()
            if n == 0:
                return total
            total += n

    async def _listen(self) -> None:
        try:
            conn = await self.pool.acquire()
        except Exception as exc:
            log.warning("outbox relay cannot LISTEN (%s); polling only", exc)
            return
        try:
            await conn.add_listener(self.outbox.channel, self._on_notify)
        except Exception as exc:
            log.warning("outbox relay cannot LISTEN (%s); polling only", exc)
            await self.pool.release(conn)
            return
        self._listener = conn
        # A dropped LISTEN connection wakes the loop, which polls and listens again.
        conn.add_termination_listener(self._on_notify)

    def _listener_alive(self) -> bool:
        conn = self._listener
        if conn is None:
            return False
        try:
            return not conn.is_closed()
        except Exception:  # asyncpg: the pool took the dead connection back
            return False

    async def _drop_listener(self) -> None:
        conn, self._listener = self._listener, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await self.pool.release(conn)

    def _on_notify(self, *args: Any) -> None:
        self._wake.set()

    async def _run(self) -> None:
        await self._listen()
        while True:
            try:
                n = await self.relay_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox relay batch failed: %s", exc)
                n = 0
            if n:
                continue
            if not self._listener_alive():
                await self._drop_listener()
                await self._listen()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):
                    await self._wake.wait()

    async def start(self) -> None:
        """Run the relay in the background."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop the relay (a batch in progress rolls back and is published again later)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        conn, self._listener = self._listener, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.remove_listener(self.outbox.channel, self._on_notify)
            with contextlib.suppress(Exception):
                await self.pool.release(conn)

    async def __aenter__(self) -> OutboxRelay:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
