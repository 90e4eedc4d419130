"""Sharded asyncpg pools: run a query on the shard that owns a key, or on every shard at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from scalekit._drivers import require
from scalekit._redact import redact_text, redact_url
from scalekit._telemetry import get_logger, meter, tracer
from scalekit.errors import (
    ConfigurationError,
    ShardMovedError,
    ShardTimeoutError,
    ShardUnavailableError,
    UnknownShardError,
)
from scalekit.sharding.fence import (
    FENCE_SQLSTATE,
    SET_EPOCH_SQL,
    fence_install_sql,
    raise_fence_sql,
)
from scalekit.sharding.migration import MigratingRouter
from scalekit.sharding.router import ShardRouter
from scalekit.sharding.strategies import Strategy

if TYPE_CHECKING:
    import asyncpg

__all__ = ["ScatterResult", "ShardOutcome", "ShardSession", "ShardedDatabase"]

logger = get_logger(__name__)

AnyRouter = ShardRouter[Any] | MigratingRouter

_METHODS = frozenset({"fetch", "fetchrow", "fetchval", "execute", "executemany"})


def _connection_errors() -> tuple[type[BaseException], ...]:
    asyncpg = require("asyncpg")
    exc = asyncpg.exceptions
    return (
        OSError,  # refused, reset, unreachable (TimeoutError is handled before)
        exc.PostgresConnectionError,  # class 08: the connection failed or does not exist
        exc.CannotConnectNowError,  # 57P03: starting up / shutting down
        exc.AdminShutdownError,  # 57P01
        exc.CrashShutdownError,  # 57P02
        exc.TooManyConnectionsError,  # 53300
        exc.InterfaceError,  # "connection is closed", "pool is closing"
        ConnectionError,
    )


def _terminate(conn: Any) -> None:
    if conn is not None:
        try:
            conn.terminate()
        except Exception:  # already released by the driver after the connection was lost
            logger.debug("terminating a broken connection failed", exc_info=True)


@dataclass(frozen=True, slots=True)
class ShardOutcome:
    """What one shard answered in a scatter: a value, or the error it failed with.

    Attributes:
        shard: the shard's name.
        value: the query's result (``None`` when it failed).
        error: the exception, or ``None`` on success.
        elapsed: seconds the shard took (including waiting for a connection).
    """

    shard: str
    value: Any
    error: BaseException | None
    elapsed: float

    @property
    def ok(self) -> bool:
        """Whether the shard answered."""
        return self.error is None


class ScatterResult(Mapping[str, ShardOutcome]):
    """Per-shard outcomes of :meth:`ShardedDatabase.scatter`: partial results are explicit.

    It is a mapping shard name -> :class:`ShardOutcome`. ``results`` holds the shards that
    answered, ``errors`` those that did not; :meth:`rows` concatenates rows and refuses to
    silently drop a failed shard unless told to.
    """

    __slots__ = ("_outcomes",)

    def __init__(self, outcomes: Sequence[ShardOutcome]) -> None:
        self._outcomes = {o.shard: o for o in outcomes}

    def __getitem__(self, shard: str) -> ShardOutcome:
        return self._outcomes[shard]

    def __iter__(self) -> Iterator[str]:
        return iter(self._outcomes)

    def __len__(self) -> int:
        return len(self._outcomes)

    @property
    def results(self) -> dict[str, Any]:
        """Shard name -> result, for the shards that answered."""
        return {s: o.value for s, o in self._outcomes.items() if o.error is None}

    @property
    def errors(self) -> dict[str, BaseException]:
        """Shard name -> exception, for the shards that failed."""
        return {s: o.error for s, o in self._outcomes.items() if o.error is not None}

    @property
    def complete(self) -> bool:
        """Whether every shard answered."""
        return all(o.error is None for o in self._outcomes.values())

    def raise_for_errors(self) -> None:
        """Raise an :class:`ExceptionGroup` of every shard's error, if any shard failed.

        Raises:
            ExceptionGroup: with one exception per failed shard (use ``except*``).
        """
        errors = self.errors
        if errors:
            raise ExceptionGroup(
                f"{len(errors)} of {len(self)} shards failed: {sorted(errors)}",
                [e if isinstance(e, Exception) else RuntimeError(repr(e)) for e in errors.values()],
            )

    def rows(self, *, allow_partial: bool = False) -> list[Any]:
        """Every shard's rows concatenated, in shard order (one value per shard for
        ``fetchrow``/``fetchval``/``execute``).

        Args:
            allow_partial: return the rows of the shards that answered even if some failed.

        Raises:
            ExceptionGroup: some shard failed and ``allow_partial`` is false.
        """
        if not allow_partial:
            self.raise_for_errors()
        out: list[Any] = []
        for outcome in self._outcomes.values():
            if outcome.error is None and outcome.value is not None:
                if isinstance(outcome.value, list):
                    out.extend(outcome.value)
                else:  # fetchrow / fetchval / execute: one value per shard
                    out.append(outcome.value)
        return out

    def __repr__(self) -> str:
        ok = sorted(self.results)
        return f"ScatterResult(ok={ok}, failed={sorted(self.errors)})"


class ShardSession:
    """Queries for one key, routed to the shard that owns it (see :meth:`ShardedDatabase.for_key`).

    Reads (``fetch``, ``fetchrow``, ``fetchval``) go to the read shard; ``execute`` and
    ``executemany`` go to every write shard (two during a migration's dual-write phases).
    Created with ``write=True``, the fetch methods also run as writes (``INSERT ... RETURNING``).
    """

    __slots__ = ("_db", "_epoch", "_router", "_shard", "key", "write")

    def __init__(self, db: ShardedDatabase, key: Any, *, write: bool) -> None:
        self._db = db
        self.key = key
        self.write = write
        self._router = db.router
        self._epoch = self._router.epoch
        self._shard: str | None = None

    async def shard(self) -> str:
        """The name of the shard this session reads from (resolved once, then pinned)."""
        if self._shard is None:
            self._shard = await self._router.ashard_for(self.key)
        return self._shard

    async def _targets(self, write: bool) -> tuple[str, ...]:
        shard = await self.shard()
        current = self._db.router
        if current is not self._router:
            # The topology changed since this session routed the key: fail if it moved.
            await current.acheck(self.key, epoch=self._epoch, shard=shard)
        if write and isinstance(current, MigratingRouter):
            return current.write_shards(self.key)
        return (shard,)

    def _fence_epoch(self, write: bool) -> int | None:
        return self._epoch if write and self._db.fenced else None

    async def _run(self, method: str, write: bool, query: str, args: tuple[Any, ...]) -> Any:
        targets = await self._targets(write)
        epoch = self._fence_epoch(write)
        result = await self._db._call(targets[0], method, query, args, None, epoch)
        for extra in targets[1:]:
            await self._db._call(extra, method, query, args, None, epoch)
        return result

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        """``Connection.fetch`` on the owning shard."""
        result: list[Any] = await self._run("fetch", self.write, query, args)
        return result

    async def fetchrow(self, query: str, *args: Any) -> Any:
        """``Connection.fetchrow`` on the owning shard."""
        return await self._run("fetchrow", self.write, query, args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        """``Connection.fetchval`` on the owning shard."""
        return await self._run("fetchval", self.write, query, args)

    async def execute(self, query: str, *args: Any) -> str:
        """``Connection.execute`` on every write shard; returns the primary's status."""
        result: str = await self._run("execute", True, query, args)
        return result

    async def executemany(self, query: str, args: Sequence[Sequence[Any]]) -> None:
        """``Connection.executemany`` on every write shard."""
        targets = await self._targets(True)
        for target in targets:
            await self._db._call(
                target, "executemany", query, (args,), None, self._fence_epoch(True)
            )

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection to the owning (read) shard for transactions and several statements.

        During a migration's dual-write phases you write the second shard yourself
        (or use :meth:`execute`).

        Raises:
            ShardUnavailableError: the shard cannot be reached within the timeout.
        """
        targets = await self._targets(self.write)
        async with self._db.connection(targets[0]) as conn:
            yield conn

    @asynccontextmanager
    async def transaction(
        self,
        *,
        timeout: float | None = None,
        **options: Any,
    ) -> AsyncIterator[asyncpg.Connection]:
        """A bounded transaction on the owning shard (see :meth:`ShardedDatabase.transaction`).

        During a migration's dual-write phases it runs on the primary write shard only.
        """
        targets = await self._targets(self.write)
        async with self._db.transaction(
            targets[0], timeout=timeout, epoch=self._fence_epoch(True), **options
        ) as conn:
            yield conn

    def __repr__(self) -> str:
        return f"ShardSession(key={self.key!r:.40}, shard={self._shard!r}, write={self.write})"


class ShardedDatabase:
    """Shard name -> asyncpg pool, routed by a :class:`ShardRouter` (or a migration).

    ``for_key(k)`` sends queries to the shard that owns ``k``; :meth:`scatter` fans a query out
    to every shard with bounded concurrency and a per-shard timeout and reports each shard's
    result or error. A shard that is down fails only its own keys, with
    :class:`~scalekit.errors.ShardUnavailableError` (or :class:`~scalekit.errors.ShardTimeoutError`
    when it hangs); other shards keep serving.

    Args:
        pools: shard name -> ``asyncpg.Pool`` (any object with ``acquire()``/``release()``).
        router: a :class:`ShardRouter` or :class:`MigratingRouter` over the same names, or a
            strategy to build one (default :class:`JumpHash` over ``pools`` in order).
        timeout: seconds allowed per shard call, connection wait included (``None``: no limit).
        owns_pools: close the pools in :meth:`aclose` (set by :meth:`from_dsns`).
        fenced: tag every write with the routing epoch so shards fenced with
            :meth:`install_fence` / :meth:`raise_fence` refuse writes of stale routers
            (one extra round trip per write).

    Raises:
        ConfigurationError: the router names shards that have no pool, or a bad timeout.
    """

    def __init__(
        self,
        pools: Mapping[str, Any],
        router: AnyRouter | Strategy | None = None,
        *,
        timeout: float | None = 30.0,
        owns_pools: bool = False,
        fenced: bool = False,
    ) -> None:
        if timeout is not None and not timeout > 0:
            raise ConfigurationError(f"timeout must be > 0 seconds or None, got {timeout!r}")
        self._pools = dict(pools)
        self.timeout = timeout
        self._owns_pools = owns_pools
        self.fenced = fenced
        self._errors = _connection_errors()
        self._pg_error: type[Exception] = require("asyncpg").PostgresError
        if router is None or isinstance(router, Strategy):
            router = ShardRouter(self._pools, router)
        self._router: AnyRouter = router
        self._check_names(router)
        self._tracer = tracer()
        self._failures = meter().create_counter(
            "scalekit.sharding.shard_failures",
            description="Shard calls that failed because the shard was down or too slow",
        )

    def _check_names(self, router: AnyRouter) -> None:
        missing = sorted(set(router.names) - set(self._pools))
        if missing:
            raise ConfigurationError(f"the router uses shards that have no pool: {missing}")

    @classmethod
    async def from_dsns(
        cls,
        dsns: Mapping[str, str],
        router: AnyRouter | Strategy | None = None,
        *,
        timeout: float | None = 30.0,
        min_size: int = 0,
        max_size: int = 10,
        **pool_options: Any,
    ) -> ShardedDatabase:
        """Create one asyncpg pool per shard (lazily connected) and own them.

        Args:
            dsns: shard name -> PostgreSQL DSN.
            router: as in the constructor.
            timeout: seconds per shard call.
            min_size: connections opened per pool up front (0: a down shard does not block
                start-up; its keys fail until it is back).
            max_size: connections per pool at most.
            **pool_options: passed to ``asyncpg.create_pool``.
        """
        asyncpg = require("asyncpg")
        pools: dict[str, Any] = {}
        try:
            for name, dsn in dsns.items():
                pools[name] = asyncpg.create_pool(
                    dsn, min_size=min_size, max_size=max_size, **pool_options
                )
                try:
                    await pools[name]
                except Exception as exc:
                    if min_size:
                        raise ShardUnavailableError(
                            f"shard {name!r} ({redact_url(dsn)}) is unreachable: "
                            f"{redact_text(str(exc))}"
                        ) from exc
                    raise
        except BaseException:
            for pool in pools.values():
                pool.terminate()
            raise
        return cls(pools, router, timeout=timeout, owns_pools=True)

    @property
    def router(self) -> AnyRouter:
        """The router in force."""
        return self._router

    @router.setter
    def router(self, router: AnyRouter) -> None:
        """Install a new router (a new epoch or a migration phase); sessions opened before it
        raise :class:`~scalekit.errors.ShardMovedError` for keys that moved."""
        self._check_names(router)
        self._router = router

    @property
    def shards(self) -> tuple[str, ...]:
        """Every shard name with a pool."""
        return tuple(self._pools)

    def pool(self, shard: str) -> Any:
        """The pool of ``shard``.

        Raises:
            UnknownShardError: no shard has that name.
        """
        try:
            return self._pools[shard]
        except KeyError:
            raise UnknownShardError(f"no shard named {shard!r}; shards are {self.shards}") from None

    def for_key(self, key: Any, *, write: bool = False) -> ShardSession:
        """Queries for ``key`` on the shard that owns it.

        Args:
            key: the shard key.
            write: run ``fetch*`` calls as writes too (all write shards during a migration).
        """
        return ShardSession(self, key, write=write)

    def _moved(self, exc: BaseException, shard: str, epoch: int | None) -> ShardMovedError | None:
        if not (isinstance(exc, self._pg_error) and getattr(exc, "sqlstate", "") == FENCE_SQLSTATE):
            return None
        try:
            current = int(getattr(exc, "detail", "") or -1)
        except ValueError:
            current = -1
        return ShardMovedError(
            f"shard {shard!r} is fenced at epoch {current} and refused a write routed at epoch "
            f"{epoch}: the topology changed, refresh the router and retry",
            epoch=-1 if epoch is None else epoch,
            current_epoch=current,
        )

    async def _call(
        self,
        shard: str,
        method: str,
        query: str,
        args: tuple[Any, ...],
        per_shard: float | None,
        epoch: int | None = None,
    ) -> Any:
        pool = self.pool(shard)
        limit = self.timeout if per_shard is None else per_shard
        conn = None
        try:
            async with asyncio.timeout(limit):
                conn = await pool.acquire()
                if epoch is not None:
                    await conn.execute(SET_EPOCH_SQL, str(epoch), False)
                return await getattr(conn, method)(query, *args)
        except TimeoutError as exc:
            _terminate(conn)  # a hung connection must never go back to the pool
            self._failures.add(1, {"shard": shard, "reason": "timeout"})
            raise ShardTimeoutError(
                f"shard {shard!r} did not answer within {limit}s; its keys are unavailable, "
                "other shards are not affected. Retry later or raise the timeout"
            ) from exc
        except self._errors as exc:
            _terminate(conn)
            self._failures.add(1, {"shard": shard, "reason": "unavailable"})
            raise ShardUnavailableError(
                f"shard {shard!r} is unavailable ({type(exc).__name__}: "
                f"{redact_text(str(exc))}); its keys fail until it is back, other shards "
                "keep serving"
            ) from exc
        except Exception as exc:
            moved = self._moved(exc, shard, epoch)
            if moved is not None:
                raise moved from exc
            raise
        finally:
            if conn is not None:
                try:
                    await pool.release(conn, timeout=limit)
                except Exception:  # releasing a broken connection must not mask the result
                    logger.debug("releasing a connection of shard %s failed", shard, exc_info=True)

    @asynccontextmanager
    async def connection(self, shard: str) -> AsyncIterator[asyncpg.Connection]:
        """A connection to ``shard`` for several statements or a transaction.

        Raises:
            UnknownShardError: no shard has that name.
            ShardUnavailableError: no connection within the timeout (``ShardTimeoutError``) or
                the shard refused it.
        """
        pool = self.pool(shard)
        try:
            async with asyncio.timeout(self.timeout):
                conn = await pool.acquire()
        except TimeoutError as exc:
            raise ShardTimeoutError(
                f"no connection to shard {shard!r} within {self.timeout}s"
            ) from exc
        except self._errors as exc:
            raise ShardUnavailableError(
                f"shard {shard!r} is unavailable ({type(exc).__name__}: {redact_text(str(exc))})"
            ) from exc
        try:
            yield conn
        except BaseException as exc:
            if isinstance(exc, (TimeoutError, asyncio.CancelledError, *self._errors)):
                _terminate(conn)  # a broken or hung connection must not go back to the pool
            raise
        finally:
            try:
                async with asyncio.timeout(self.timeout):
                    await pool.release(conn)
            except Exception:
                logger.debug("releasing a connection of shard %s failed", shard, exc_info=True)
                _terminate(conn)

    @asynccontextmanager
    async def transaction(
        self,
        shard: str,
        *,
        timeout: float | None = None,
        epoch: int | None = None,
        **options: Any,
    ) -> AsyncIterator[asyncpg.Connection]:
        """A transaction on ``shard`` that a hung shard cannot turn into a hung caller.

        The whole block (BEGIN, your statements, COMMIT) must finish within ``timeout``
        (default: the database's ``timeout``); a rollback after an error is bounded too, and
        a connection that cannot be rolled back is closed instead of reused.

        Args:
            shard: the shard's name.
            timeout: seconds for the whole transaction.
            epoch: the routing epoch to tag the transaction's writes with (fenced shards
                refuse older ones); ``None``: not fenced.
            **options: ``Connection.transaction`` options (``isolation``, ``readonly``...).

        Raises:
            ShardTimeoutError: the transaction did not finish in time (it was rolled back,
                or the connection was closed, which rolls it back on the server).
            ShardUnavailableError: the shard was unreachable, or the connection broke
                during COMMIT (the outcome of the commit is then unknown).
        """
        limit = self.timeout if timeout is None else timeout
        async with self.connection(shard) as conn:
            tx = conn.transaction(**options)
            try:
                async with asyncio.timeout(limit):
                    await tx.start()
                    if epoch is not None:
                        await conn.execute(SET_EPOCH_SQL, str(epoch), True)
                    yield conn
            except TimeoutError as exc:
                await self._rollback(tx, conn, limit)
                self._failures.add(1, {"shard": shard, "reason": "timeout"})
                raise ShardTimeoutError(
                    f"a transaction on shard {shard!r} did not finish within {limit}s; it was "
                    "rolled back (or its connection closed). Retry later or raise the timeout"
                ) from exc
            except BaseException as exc:
                await self._rollback(tx, conn, limit)
                moved = self._moved(exc, shard, epoch)
                if moved is not None:
                    raise moved from exc
                raise
            commit_errors: tuple[type[BaseException], ...] = (TimeoutError, *self._errors)
            try:
                async with asyncio.timeout(limit):
                    await tx.commit()
            except commit_errors as exc:
                _terminate(conn)
                self._failures.add(1, {"shard": shard, "reason": "commit"})
                raise ShardUnavailableError(
                    f"COMMIT on shard {shard!r} got no answer ({type(exc).__name__}); the "
                    "transaction may or may not have committed: check before retrying "
                    "anything that is not idempotent"
                ) from exc

    async def install_fence(self, *tables: str, shards: Sequence[str] | None = None) -> None:
        """Install the write fence (table, function, and a trigger per table) on every shard.

        Idempotent. See :mod:`scalekit.sharding.fence`.

        Args:
            *tables: the sharded tables to fence.
            shards: the shards to install on (default: all).

        Raises:
            ConfigurationError: a table name is not a plain SQL identifier.
        """
        statements = [sql for table in tables for sql in fence_install_sql(table)]
        for shard in self.shards if shards is None else shards:
            async with self.connection(shard) as conn:
                for sql in statements:
                    await conn.execute(sql)

    async def raise_fence(self, epoch: int, shards: Sequence[str] | None = None) -> None:
        """Refuse, from now on, writes routed at an epoch below ``epoch`` on these shards.

        Returns once every write that already passed the old fence has finished.

        Args:
            epoch: the new fence (a fence never goes down).
            shards: the shards to fence (default: all).
        """
        for shard in self.shards if shards is None else shards:
            async with self.connection(shard) as conn:
                await conn.execute(raise_fence_sql(), epoch)

    async def _rollback(self, tx: Any, conn: Any, limit: float | None) -> None:
        try:
            async with asyncio.timeout(limit or 10.0):
                await tx.rollback()
        except BaseException:  # hung or broken: closing the connection rolls back server-side
            _terminate(conn)

    async def scatter(
        self,
        query: str,
        *args: Any,
        method: str = "fetch",
        shards: Sequence[str] | None = None,
        concurrency: int | None = None,
        timeout: float | None = None,
    ) -> ScatterResult:
        """Run ``query`` on every shard (or on ``shards``) and collect every shard's outcome.

        Args:
            query: the SQL to run.
            *args: its parameters.
            method: ``"fetch"`` (default), ``"fetchrow"``, ``"fetchval"`` or ``"execute"``.
            shards: the shards to ask (default: all).
            concurrency: shards queried at once at most (default: all at once).
            timeout: seconds per shard, counted from when its turn starts (default: the
                database's ``timeout``).

        Returns:
            A :class:`ScatterResult`; it never raises for a shard's failure, it reports it.

        Raises:
            ConfigurationError: unknown ``method`` or a ``concurrency`` below 1.
            UnknownShardError: ``shards`` names an unknown shard.
        """
        if method not in _METHODS - {"executemany"}:
            raise ConfigurationError(
                f"scatter method must be fetch/fetchrow/fetchval/execute, not {method!r}"
            )
        if concurrency is not None and concurrency < 1:
            raise ConfigurationError(f"concurrency must be >= 1, got {concurrency!r}")
        names = list(self._pools) if shards is None else list(shards)
        for name in names:
            self.pool(name)
        gate = asyncio.Semaphore(concurrency or len(names) or 1)
        span_cm = self._tracer.start_as_current_span(
            "scalekit.sharding.scatter", attributes={"db.system.name": "postgresql"}
        )

        async def one(shard: str) -> ShardOutcome:
            async with gate:
                start = time.monotonic()
                try:
                    value = await self._call(shard, method, query, args, timeout)
                except Exception as exc:  # reported per shard, never raised from scatter
                    return ShardOutcome(shard, None, exc, time.monotonic() - start)
                return ShardOutcome(shard, value, None, time.monotonic() - start)

        with span_cm as span:
            outcomes = await asyncio.gather(*(one(name) for name in names))
            result = ScatterResult(outcomes)
            if span.is_recording():
                span.set_attribute("scalekit.sharding.shards", len(names))
                span.set_attribute("scalekit.sharding.failed_shards", sorted(result.errors))
        return result

    async def aclose(self) -> None:
        """Close the pools if this object created them (:meth:`from_dsns`)."""
        if self._owns_pools:
            await asyncio.gather(*(self._close(p) for p in self._pools.values()))

    async def _close(self, pool: Any) -> None:
        try:
            async with asyncio.timeout(self.timeout or 10.0):
                await pool.close()
        except Exception:  # a hung shard must not hang shutdown: drop its connections
            logger.warning("closing a shard pool did not finish; terminating it", exc_info=True)
            pool.terminate()

    async def __aenter__(self) -> ShardedDatabase:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"ShardedDatabase(shards={list(self._pools)}, router={self._router!r})"
