"""Copy the rows of moving keys between asyncpg shards: batched, resumable, verified.

The helper works on one table and one ``(source, target)`` pair of a
:class:`~scalekit.sharding.MigratingRouter`; run one per pair of ``plan.flows()``.

* :meth:`Backfill.run` copies, in primary-key order, every source row whose shard key moves to
  the target. Each batch is read with ``FOR SHARE`` (so a concurrent update or delete of those
  rows waits until they are copied, and its dual write then reaches the target too), inserted
  with ``ON CONFLICT DO NOTHING`` (a dual write that got there first is newer) and the
  checkpoint is committed in the same target transaction: a crash resumes exactly where the
  last committed batch ended.
* :meth:`Backfill.verify` compares row counts and per-row ``md5(row::text)`` checksums of the
  moving rows on both sides and, with ``repair=True``, re-copies what differs (under the same
  row locks) and deletes target rows the source does not have.
* :meth:`Backfill.cleanup` deletes the moved rows from the source after cut-over.

Primary keys must be int, text or uuid columns, and both shards must have the same table
definition (the checksum is over the row's text form).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from scalekit._redact import redact_text
from scalekit._telemetry import get_logger
from scalekit.errors import ConfigurationError, ShardTimeoutError, ShardUnavailableError
from scalekit.sharding.migration import MigratingRouter

if TYPE_CHECKING:
    from scalekit.sharding.database import ShardedDatabase

__all__ = ["Backfill", "BackfillProgress", "VerifyReport"]

logger = get_logger(__name__)

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def _quote(name: str, what: str) -> str:
    parts = name.split(".")
    if len(parts) > 2 or not all(_IDENT.match(p) for p in parts):
        raise ConfigurationError(
            f"{what} {name!r} is not a plain SQL identifier ([A-Za-z_][A-Za-z0-9_]*, "
            "optionally schema-qualified)"
        )
    return ".".join(f'"{p}"' for p in parts)


@dataclass(frozen=True, slots=True)
class BackfillProgress:
    """Where a backfill stands.

    Attributes:
        name: the checkpoint's name.
        last_pk: the primary key the last committed batch ended at (``None``: not started).
        copied: rows inserted into the target so far (rows a dual write had already
            written are not counted).
        scanned: source rows read so far, moving or not.
        done: whether the source has no row after ``last_pk`` (as of the last batch).
    """

    name: str
    last_pk: Any
    copied: int
    scanned: int
    done: bool


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The comparison of the moving rows on the source and the target.

    Attributes:
        source_rows: moving rows on the source.
        target_rows: rows on the target whose key moves from the source.
        source_checksum: sha256 over ``pk:md5(row)`` of the source rows, in pk order.
        target_checksum: the same over the target rows.
        missing: primary keys on the source, not on the target.
        extra: primary keys on the target, not on the source.
        different: primary keys whose rows differ.
        repaired: rows re-copied or deleted by ``repair=True``.
    """

    source_rows: int
    target_rows: int
    source_checksum: str
    target_checksum: str
    missing: tuple[Any, ...]
    extra: tuple[Any, ...]
    different: tuple[Any, ...]
    repaired: int = 0

    @property
    def ok(self) -> bool:
        """Counts and checksums agree."""
        return (
            self.source_rows == self.target_rows
            and self.source_checksum == self.target_checksum
            and not (self.missing or self.extra or self.different)
        )


class Backfill:
    """Copy one table's moving rows from ``source`` to ``target`` (see the module docs).

    Args:
        db: the sharded database; its pools are used, and its router must be the
            :class:`MigratingRouter` of the move unless ``migration`` is given.
        source: the shard rows move from.
        target: the shard rows move to.
        table: the table (``name`` or ``schema.name``), identical on both shards.
        key_column: the column holding the shard key.
        pk_column: the primary key column (int, text or uuid).
        batch_size: rows read from the source per batch.
        name: the checkpoint's name (default ``"<table>:<source>-><target>"``).
        migration: the move (default: ``db.router``).
        state_table: where checkpoints live, on the target shard.
        batch_timeout: seconds one batch (read, copy, checkpoint) may take; a hung shard then
            fails the run with :class:`~scalekit.errors.ShardTimeoutError`.

    Raises:
        ConfigurationError: identifiers that are not plain SQL names, a batch size below 1,
            or no migration to follow.
    """

    def __init__(
        self,
        db: ShardedDatabase,
        *,
        source: str,
        target: str,
        table: str,
        key_column: str,
        pk_column: str = "id",
        batch_size: int = 500,
        name: str | None = None,
        migration: MigratingRouter | None = None,
        state_table: str = "scalekit_backfill",
        batch_timeout: float = 60.0,
    ) -> None:
        if not batch_timeout > 0:
            raise ConfigurationError(f"batch_timeout must be > 0 seconds, got {batch_timeout!r}")
        self.batch_timeout = batch_timeout
        if batch_size < 1:
            raise ConfigurationError(f"batch_size must be >= 1, got {batch_size!r}")
        migration = migration if migration is not None else db.router  # type: ignore[assignment]
        if not isinstance(migration, MigratingRouter):
            raise ConfigurationError(
                "Backfill follows a MigratingRouter: pass migration=... or install it as db.router"
            )
        db.pool(source)
        db.pool(target)
        self._db = db
        self.source = source
        self.target = target
        self._table = _quote(table, "table")
        self._key = _quote(key_column, "key column")
        self._pk = _quote(pk_column, "primary key column")
        self._state = _quote(state_table, "state table")
        self.key_column = key_column
        self.pk_column = pk_column
        self.batch_size = batch_size
        self.name = name or f"{table}:{source}->{target}"
        old_for, new_for = migration.old.shard_for, migration.new.shard_for
        self._moves: Callable[[Any], bool] = lambda key: (
            old_for(key) == source and new_for(key) == target
        )

    def moves(self, key: Any) -> bool:
        """Whether rows with shard key ``key`` move from this source to this target."""
        return self._moves(key)

    async def _ensure_state(self, conn: Any) -> None:
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self._state} ("
            " name text PRIMARY KEY, last_pk jsonb, copied bigint NOT NULL DEFAULT 0,"
            " scanned bigint NOT NULL DEFAULT 0, done boolean NOT NULL DEFAULT false)"
        )

    async def progress(self) -> BackfillProgress:
        """The committed checkpoint (``last_pk=None`` before the first batch)."""
        async with self._db.connection(self.target) as conn:
            await self._ensure_state(conn)
            row = await conn.fetchrow(
                f"SELECT last_pk, copied, scanned, done FROM {self._state} WHERE name = $1",
                self.name,
            )
        if row is None:
            return BackfillProgress(self.name, None, 0, 0, False)
        last = json.loads(row["last_pk"])["v"] if row["last_pk"] is not None else None
        return BackfillProgress(self.name, last, row["copied"], row["scanned"], row["done"])

    async def reset(self) -> None:
        """Forget the checkpoint, so the next :meth:`run` starts from the first row."""
        async with self._db.connection(self.target) as conn:
            await self._ensure_state(conn)
            await conn.execute(f"DELETE FROM {self._state} WHERE name = $1", self.name)

    @asynccontextmanager
    async def _transaction(self, conn: Any) -> AsyncIterator[None]:
        # asyncpg's own context manager awaits ROLLBACK on any error, which hangs forever on a
        # hung server: bound it, and drop the connection when it cannot be rolled back.
        transaction = conn.transaction()
        await transaction.start()
        try:
            yield
        except BaseException:
            try:
                async with asyncio.timeout(self.batch_timeout):
                    await transaction.rollback()
            except BaseException:
                conn.terminate()
            raise
        await transaction.commit()

    @asynccontextmanager
    async def _shard_errors(self, what: str) -> AsyncIterator[None]:
        try:
            yield
        except ShardUnavailableError as exc:  # from acquiring a connection
            raise type(exc)(
                f"{what} of {self.name} stopped: {exc}. Committed batches are kept: "
                "run it again to resume"
            ) from exc
        except TimeoutError as exc:
            raise ShardTimeoutError(
                f"{what} of {self.name} got no answer from a shard within "
                f"{self.batch_timeout}s; committed batches are kept: run it again to resume"
            ) from exc
        except self._db._errors as exc:
            raise ShardUnavailableError(
                f"{what} of {self.name} lost its connection to a shard ({type(exc).__name__}: "
                f"{redact_text(str(exc))}); committed batches are kept: run it again to resume"
            ) from exc

    async def run(self, *, max_batches: int | None = None) -> BackfillProgress:
        """Copy batches until the source is exhausted (or ``max_batches`` were copied).

        Resumes from the committed checkpoint. Safe to run again after it finished: it then
        only looks for rows inserted after the last key it saw.

        Args:
            max_batches: stop after this many batches (to pace the copy or test a crash).

        Returns:
            The committed progress.

        Raises:
            ShardUnavailableError: a shard is unreachable or the connection broke mid-batch;
                the batch in flight is rolled back, the checkpoint kept: run again to resume.
        """
        async with self._shard_errors("the copy"):
            return await self._run(max_batches)

    async def _run(self, max_batches: int | None) -> BackfillProgress:
        progress = await self.progress()
        last, copied, scanned = progress.last_pk, progress.copied, progress.scanned
        batches = 0
        done = False
        while max_batches is None or batches < max_batches:
            async with (
                asyncio.timeout(self.batch_timeout),
                self._db.connection(self.source) as src,
                self._db.connection(self.target) as dst,
                self._transaction(src),
            ):
                if last is None:
                    rows = await src.fetch(
                        f"SELECT * FROM {self._table} ORDER BY {self._pk} LIMIT $1 FOR SHARE",
                        self.batch_size,
                    )
                else:
                    rows = await src.fetch(
                        f"SELECT * FROM {self._table} WHERE {self._pk} > $1 "
                        f"ORDER BY {self._pk} LIMIT $2 FOR SHARE",
                        last,
                        self.batch_size,
                    )
                if not rows:
                    done = True
                    async with self._transaction(dst):
                        await self._save(dst, last, copied, scanned, True)
                    break
                moving = [r for r in rows if self._moves(r[self.key_column])]
                async with self._transaction(dst):
                    copied += await self._insert(dst, moving, update=False)
                    scanned += len(rows)
                    last = _json_pk(rows[-1][self.pk_column])
                    await self._save(dst, last, copied, scanned, False)
            batches += 1
            logger.debug("backfill %s: %d copied, %d scanned", self.name, copied, scanned)
        return BackfillProgress(self.name, last, copied, scanned, done)

    async def _save(self, conn: Any, last: Any, copied: int, scanned: int, done: bool) -> None:
        await self._ensure_state(conn)
        await conn.execute(
            f"INSERT INTO {self._state} (name, last_pk, copied, scanned, done)"
            " VALUES ($1, $2::jsonb, $3, $4, $5) ON CONFLICT (name) DO UPDATE SET"
            " last_pk = EXCLUDED.last_pk, copied = EXCLUDED.copied,"
            " scanned = EXCLUDED.scanned, done = EXCLUDED.done",
            self.name,
            None if last is None else json.dumps({"v": last}),
            copied,
            scanned,
            done,
        )

    async def _insert(self, conn: Any, rows: list[Any], *, update: bool) -> int:
        if not rows:
            return 0
        columns = list(rows[0].keys())
        cols = ", ".join(_quote(c, "column") for c in columns)
        params = ", ".join(f"${i + 1}" for i in range(len(columns)))
        if update:
            sets = ", ".join(
                f"{_quote(c, 'column')} = EXCLUDED.{_quote(c, 'column')}"
                for c in columns
                if c != self.pk_column
            )
            conflict = f"DO UPDATE SET {sets}" if sets else "DO NOTHING"
        else:
            conflict = "DO NOTHING"
        inserted = 0
        stmt = await conn.prepare(
            f"INSERT INTO {self._table} ({cols}) VALUES ({params}) "
            f"ON CONFLICT ({self._pk}) {conflict} RETURNING 1"
        )
        for row in rows:
            if await stmt.fetchval(*row.values()) is not None:
                inserted += 1
        return inserted

    async def _checksums(self, conn: Any, after: Any, upto: Any) -> dict[Any, str]:
        table, pk, key = self._table, self._pk, self._key
        query = f"SELECT {pk} AS pk, {key} AS key, md5(t::text) AS sum FROM {table} t"
        conds, args = [], []
        if after is not None:
            args.append(after)
            conds.append(f"{pk} > ${len(args)}")
        if upto is not None:
            args.append(upto)
            conds.append(f"{pk} <= ${len(args)}")
        if conds:
            query += " WHERE " + " AND ".join(conds)
        rows = await conn.fetch(query + f" ORDER BY {pk}", *args)
        return {r["pk"]: r["sum"] for r in rows if self._moves(r["key"])}

    async def verify(self, *, repair: bool = False) -> VerifyReport:
        """Compare the moving rows on both shards, batch by batch in primary-key order.

        Run it while dual writes continue: a row written between the two reads can show as a
        transient difference; with ``repair=True`` the differing rows are re-copied under row
        locks, and a second ``verify()`` should then come back clean.

        Args:
            repair: re-copy missing and different rows and delete extra ones on the target.

        Returns:
            A :class:`VerifyReport` (of the state before any repair).

        Raises:
            ShardUnavailableError: a shard is unreachable or the connection broke.
        """
        async with self._shard_errors("the verification"):
            return await self._verify(repair)

    async def _verify(self, repair: bool) -> VerifyReport:
        src_hash, dst_hash = hashlib.sha256(), hashlib.sha256()
        src_rows = dst_rows = repaired = 0
        missing: list[Any] = []
        extra: list[Any] = []
        different: list[Any] = []
        last: Any = None
        pk = self._pk
        async with (
            self._db.connection(self.source) as src,
            self._db.connection(self.target) as dst,
        ):
            while True:
                if last is None:
                    keys = await src.fetch(
                        f"SELECT {pk} AS pk FROM {self._table} ORDER BY {pk} LIMIT $1",
                        self.batch_size,
                    )
                else:
                    keys = await src.fetch(
                        f"SELECT {pk} AS pk FROM {self._table} WHERE {pk} > $1 "
                        f"ORDER BY {pk} LIMIT $2",
                        last,
                        self.batch_size,
                    )
                upto = _json_pk(keys[-1]["pk"]) if keys else None
                a = await self._checksums(src, last, upto)
                b = await self._checksums(dst, last, upto)
                for key in sorted(a):
                    src_hash.update(f"{key}:{a[key]}\n".encode())
                for key in sorted(b):
                    dst_hash.update(f"{key}:{b[key]}\n".encode())
                src_rows += len(a)
                dst_rows += len(b)
                miss = [k for k in a if k not in b]
                ext = [k for k in b if k not in a]
                diff = [k for k in a if k in b and a[k] != b[k]]
                missing += miss
                extra += ext
                different += diff
                if repair and (miss or ext or diff):
                    repaired += await self._repair(miss + diff + ext)
                if not keys:
                    break
                last = upto
        return VerifyReport(
            src_rows,
            dst_rows,
            src_hash.hexdigest(),
            dst_hash.hexdigest(),
            tuple(missing),
            tuple(extra),
            tuple(different),
            repaired,
        )

    async def _repair(self, pks: list[Any]) -> int:
        async with (
            self._db.connection(self.source) as src,
            self._db.connection(self.target) as dst,
            self._transaction(src),
        ):
            rows = await src.fetch(
                f"SELECT * FROM {self._table} WHERE {self._pk} = ANY($1) FOR SHARE", pks
            )
            rows = [r for r in rows if self._moves(r[self.key_column])]
            present = {r[self.pk_column] for r in rows}
            gone = [k for k in pks if k not in present]
            async with self._transaction(dst):
                await self._insert(dst, rows, update=True)
                if gone:
                    await dst.execute(f"DELETE FROM {self._table} WHERE {self._pk} = ANY($1)", gone)
        return len(rows) + len(gone)

    async def cleanup(self) -> int:
        """Delete the moved rows from the source (run in the ``CLEANUP`` phase).

        Returns:
            The number of rows deleted.

        Raises:
            ShardUnavailableError: a shard is unreachable or the connection broke; deleted
                batches stay deleted, run it again to finish.
        """
        async with self._shard_errors("the cleanup"):
            return await self._cleanup()

    async def _cleanup(self) -> int:
        deleted = 0
        last: Any = None
        async with self._db.connection(self.source) as src:
            while True:
                rows = await src.fetch(
                    f"SELECT {self._pk} AS pk, {self._key} AS key FROM {self._table}"
                    + ("" if last is None else f" WHERE {self._pk} > $2")
                    + f" ORDER BY {self._pk} LIMIT $1",
                    self.batch_size,
                    *(() if last is None else (last,)),
                )
                if not rows:
                    return deleted
                last = _json_pk(rows[-1]["pk"])
                gone = [r["pk"] for r in rows if self._moves(r["key"])]
                if gone:
                    status = await src.execute(
                        f"DELETE FROM {self._table} WHERE {self._pk} = ANY($1)", gone
                    )
                    deleted += int(status.split()[-1])


def _json_pk(value: Any) -> Any:
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        return value
    return str(value)  # uuid: asyncpg accepts the text form for uuid parameters
