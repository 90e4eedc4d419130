"""Pool-like handles on one role, and transactions: what ``db.primary``, ``db.replica()`` and
``db.transaction()`` return."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from scalekit._telemetry import get_logger
from scalekit.db._replica import Role

if TYPE_CHECKING:
    from scalekit.db._replica import _Server
    from scalekit.db.database import Database

_log = get_logger(__name__)

__all__ = ["Handle", "Transaction"]

_WRITE_LSN = "SELECT pg_current_wal_lsn()"

# the keyword arguments of a call that passes only the driver's defaults (never mutated)
_NO_KW: dict[str, Any] = {}

_Connection = Any  # asyncpg.Connection / PoolConnectionProxy; Any keeps asyncpg optional


class _Unavailable(Exception):
    """Internal: the chosen replica failed at the connection level; route elsewhere."""


class Handle:
    """Pool-like access to one role: ``fetch*``, ``execute``, ``executemany``, ``acquire``.

    ``db.primary`` sends everything to the primary and records the WAL position after each call
    (so later reads in the same scope see it). ``db.replica()`` routes each call to a replica that
    is healthy, fresh enough and has replayed the scope's writes, else to the primary.
    """

    __slots__ = ("_db", "_max_lag", "_role")

    def __init__(self, db: Database, role: Role, max_lag: float | None = None) -> None:
        self._db = db
        self._role: Role = role
        self._max_lag = max_lag

    @property
    def role(self) -> Role:
        """``"primary"`` or ``"replica"``."""
        return self._role

    async def _call(
        self, method: str, query: str, args: tuple[Any, ...], kw: dict[str, Any]
    ) -> Any:
        if self._role == "primary":
            return await self._db._write(method, query, args, kw)
        return await self._db._read(method, query, args, kw, self._max_lag)

    async def fetch(self, query: str, *args: Any, timeout: float | None = None) -> list[Any]:
        """Run a query and return every row (``asyncpg.Record`` objects)."""
        kw = _NO_KW if timeout is None else {"timeout": timeout}
        result: list[Any] = await self._call("fetch", query, args, kw)
        return result

    async def fetchrow(self, query: str, *args: Any, timeout: float | None = None) -> Any:
        """Run a query and return its first row, or ``None``."""
        kw = _NO_KW if timeout is None else {"timeout": timeout}
        return await self._call("fetchrow", query, args, kw)

    async def fetchval(
        self,
        query: str,
        *args: Any,
        column: int = 0,
        timeout: float | None = None,
    ) -> Any:
        """Run a query and return one value of its first row, or ``None``."""
        kw = _NO_KW if column == 0 and timeout is None else {"column": column, "timeout": timeout}
        return await self._call("fetchval", query, args, kw)

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        """Run a statement and return its status string (e.g. ``"INSERT 0 1"``)."""
        result: str = await self._call("execute", query, args, {"timeout": timeout})
        return result

    async def executemany(
        self,
        command: str,
        args: Sequence[Sequence[Any]],
        *,
        timeout: float | None = None,
    ) -> None:
        """Run a statement once per argument tuple (in one transaction on the primary)."""
        await self._call("executemany", command, (args,), {"timeout": timeout})

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[_Connection]:
        """Hold one connection of this role for several statements.

        On the primary the WAL position is recorded when the block ends; on a replica handle the
        connection comes from a replica chosen as for a single read (or from the primary).

        Raises:
            TimeoutError: no connection within the database's ``acquire_timeout``.
        """
        db = self._db
        if self._role == "primary":
            server = await db._primary_server()
            conn = await db._acquire(server)
            try:
                yield conn
                if db._track_writes and not conn.is_in_transaction():
                    db._note_write(await conn.fetchval(_WRITE_LSN))
            except BaseException as exc:
                db._check_primary_error(exc)
                raise
            finally:
                await db._release(server, conn)
        else:
            held = await db._read_connection(self._max_lag)
            try:
                yield held.conn
            finally:
                await db._release_held(held)

    def __repr__(self) -> str:
        return f"<Handle {self._role}>"


class Transaction:
    """``async with db.transaction() as conn:``: a transaction on the primary, or read-only on a
    replica with ``readonly=True``. Commits on success, rolls back on an exception.

    Work that must follow the commit, never precede it or survive a rollback (invalidating a
    cache entry, publishing an event), goes in :meth:`after_commit`::

        tx = db.transaction()
        async with tx as conn:
            await conn.execute("UPDATE users SET name = $1 WHERE id = $2", name, user_id)
            tx.after_commit(cache.delete, f"user:{user_id}")
    """

    __slots__ = (
        "_after",
        "_conn",
        "_db",
        "_deferrable",
        "_held",
        "_isolation",
        "_max_lag",
        "_readonly",
        "_server",
        "_tx",
    )

    def __init__(
        self,
        db: Database,
        *,
        readonly: bool,
        isolation: str | None,
        deferrable: bool,
        max_lag: float | None,
    ) -> None:
        self._db = db
        self._readonly = readonly
        self._isolation = isolation
        self._deferrable = deferrable
        self._max_lag = max_lag
        self._server: _Server | None = None
        self._conn: _Connection = None
        self._held: Any = None  # set for readonly transactions
        self._tx: Any = None
        self._after: list[tuple[Callable[..., Awaitable[Any]], tuple[Any, ...]]] = []

    def after_commit(self, fn: Callable[..., Awaitable[Any]], /, *args: Any) -> None:
        """Run ``await fn(*args)`` once the transaction has committed; never after a rollback.

        Callbacks run in the order they were added, after the commit and after the write's
        WAL position is recorded for read-your-writes, so what they trigger (a cache reload)
        reads the committed data. A callback that raises is logged on the ``scalekit.db``
        logger and the next one still runs: the transaction is committed either way, so
        nothing is raised to the caller.

        Raises:
            TypeError: ``fn`` is not callable.
        """
        if not callable(fn):
            raise TypeError(f"after_commit needs a coroutine function, got {fn!r:.60}")
        self._after.append((fn, args))

    async def _run_after_commit(self) -> None:
        callbacks, self._after = self._after, []
        for fn, args in callbacks:
            try:
                await fn(*args)
            except Exception:
                _log.exception("an after_commit callback (%r) failed", fn)

    async def __aenter__(self) -> _Connection:
        db = self._db
        if self._readonly:
            self._held = held = await db._read_connection(self._max_lag)
            self._server, self._conn = held.server, held.conn
        else:
            self._server = await db._primary_server()
            self._conn = await db._acquire(self._server)
        try:
            self._tx = self._conn.transaction(
                isolation=self._isolation, readonly=self._readonly, deferrable=self._deferrable
            )
            await self._tx.start()
        except BaseException:
            await self._finish()
            raise
        return self._conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        db = self._db
        committed = False
        try:
            if exc is None:
                await self._tx.commit()
                committed = True
                server = self._server
                primary = server is not None and server.role == "primary"
                if not self._readonly and primary and db._track_writes:
                    db._note_write(await self._conn.fetchval(_WRITE_LSN))
            else:
                with contextlib.suppress(Exception):
                    await self._tx.rollback()
        except BaseException as error:
            if not self._readonly:
                db._check_primary_error(error)
            raise
        finally:
            await self._finish()
            if committed:  # even if recording the WAL position failed: the data is in
                await self._run_after_commit()
            else:
                self._after.clear()
        if exc is not None and not self._readonly:
            db._check_primary_error(exc)

    async def _finish(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            self._conn = None
            await self._db._release_held(held)
        elif self._server is not None and self._conn is not None:
            await self._db._release(self._server, self._conn)
            self._conn = None
