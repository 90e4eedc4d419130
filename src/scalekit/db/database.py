"""The read/write splitter: a primary, replicas, health and lag monitor, read-your-writes."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Sequence
from contextvars import ContextVar
from types import TracebackType
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import SpanKind, Status, StatusCode

from scalekit import _telemetry
from scalekit._drivers import require
from scalekit._redact import redact_text
from scalekit.balance import Balancer, PowerOfTwoChoices
from scalekit.clock import SYSTEM_CLOCK, Clock, SystemClock
from scalekit.db._consistency import ConsistencyScope, TokenCodec, _Scope
from scalekit.db._replica import ReplicaStatus, _Server
from scalekit.db.handles import _NO_KW, _WRITE_LSN, Handle, Transaction, _Connection, _Unavailable
from scalekit.errors import (
    ConfigurationError,
    DatabaseError,
    NoReplicaAvailableError,
    PrimaryNotFoundError,
    ReadOnlyPrimaryError,
)

if TYPE_CHECKING:
    import asyncpg

__all__ = ["Database"]

_log = _telemetry.get_logger(__name__)

_CHECK_REPLICA = (
    "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn(), "
    "EXTRACT(EPOCH FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8"
)
_CHECK_PRIMARY = "SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn() END"
_REPLAY_LSN = "SELECT pg_last_wal_replay_lsn()"
_POLL_INTERVAL = 0.002


# Until an SDK tracer provider is installed, a proxy tracer's spans are no-ops: the hot path
# reads the API's global (``get_tracer_provider()`` costs an ``os.environ`` lookup per call)
# and skips creating them. Should that global ever disappear, spans are always created.
_PROVIDER_GLOBAL = hasattr(trace, "_TRACER_PROVIDER")


def _tracer_provider_set() -> bool:
    """Whether an SDK tracer provider is installed (once set, it never changes)."""
    return trace._TRACER_PROVIDER is not None


def _monotonic(clock: Clock) -> Any:
    """``clock.monotonic``, or :func:`time.monotonic` itself for the system clock (no wrapper)."""
    return time.monotonic if type(clock) is SystemClock else clock.monotonic


class _Held:
    """A connection held for a read-only unit of work, with what its release must undo."""

    __slots__ = ("capped", "conn", "lease", "server")

    def __init__(self, server: _Server, conn: _Connection, lease: Any, capped: bool) -> None:
        self.server = server
        self.conn = conn
        self.lease = lease
        self.capped = capped


class Database:
    """A primary and its streaming replicas behind one object, with safe read/write splitting.

    ``db.fetch*`` read from a replica, ``db.execute`` writes to the primary, ``db.primary`` and
    ``db.replica()`` route explicitly, ``db.transaction()`` runs on the primary. A monitor task
    checks every replica's recovery state, replay position and lag on an interval and takes bad
    ones out of rotation. After a write, reads in the same scope (the asyncio context, or a
    :meth:`consistent_with` block) go to a replica only once it has replayed the write's WAL
    position, waiting at most ``read_your_writes_timeout``, else to the primary.

    Args:
        primary: the primary's DSN, or several candidates: the first writable one is used, and
            rediscovered after a failover.
        replicas: the replicas' DSNs.
        balancer: an empty :class:`scalekit.balance.Balancer` to spread reads over replicas
            (default: :class:`~scalekit.balance.PowerOfTwoChoices` without panic mode).
        max_lag: seconds of replication lag beyond which a replica leaves rotation.
        fallback_to_primary: read from the primary when no replica can serve; ``False`` raises
            :class:`~scalekit.errors.NoReplicaAvailableError` instead.
        max_fallback_reads: the most concurrent reads sent to the primary because no replica is
            usable (an outage must not saturate the primary); beyond it reads raise
            ``NoReplicaAvailableError``. Default: half the pool's ``max_size``.
        read_your_writes: record the WAL position after writes (one extra round trip per write).
        read_your_writes_timeout: seconds a read waits for a replica to replay the scope's
            writes before it goes to the primary (0: check once, never wait).
        check_interval: seconds between replica health checks.
        check_timeout: seconds a health check may take before the replica counts as down.
        readmit_after: consecutive good checks before a replica that left rotation returns.
        token_secret: secret(s) that sign consistency tokens; share it between services that
            exchange tokens. ``None``: a random per-process secret.
        pgbouncer: behind PgBouncer in transaction mode: disables the prepared statement cache.
        acquire_timeout: seconds to wait for a pooled connection.
        connect_timeout: seconds to open one connection.
        min_size: connections each pool keeps open.
        max_size: the most connections per pool.
        clock: the time source of the monitor and the staleness maths.
        **pool_options: passed on to :func:`asyncpg.create_pool` (e.g. ``command_timeout``).

    Raises:
        ConfigurationError: invalid arguments.
        MissingDependencyError: asyncpg is not installed (``scalekit[postgres]``).
    """

    def __init__(
        self,
        primary: str | Sequence[str],
        replicas: Sequence[str] = (),
        *,
        balancer: Balancer[Any] | None = None,
        max_lag: float = 30.0,
        fallback_to_primary: bool = True,
        max_fallback_reads: int | None = None,
        read_your_writes: bool = True,
        read_your_writes_timeout: float = 0.05,
        check_interval: float = 1.0,
        check_timeout: float = 2.0,
        readmit_after: int = 2,
        token_secret: str | bytes | Sequence[str | bytes] | None = None,
        pgbouncer: bool = False,
        acquire_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        min_size: int = 1,
        max_size: int = 10,
        clock: Clock = SYSTEM_CLOCK,
        **pool_options: Any,
    ) -> None:
        self._asyncpg = require("asyncpg")
        candidates = [primary] if isinstance(primary, str) else list(primary)
        if not candidates or not all(isinstance(c, str) and c for c in candidates):
            raise ConfigurationError("primary must be a DSN string or a non-empty list of them")
        if isinstance(replicas, str) or not all(isinstance(r, str) and r for r in replicas):
            raise ConfigurationError("replicas must be a list of DSN strings")
        for name, value in (
            ("max_lag", max_lag),
            ("read_your_writes_timeout", read_your_writes_timeout),
            ("acquire_timeout", acquire_timeout),
            ("connect_timeout", connect_timeout),
            ("check_timeout", check_timeout),
        ):
            if not isinstance(value, (int, float)) or value < 0 or math.isnan(value):
                raise ConfigurationError(f"{name} must be a number of seconds >= 0, got {value!r}")
        if not check_interval > 0:
            raise ConfigurationError("check_interval must be > 0 seconds")
        if readmit_after < 1:
            raise ConfigurationError("readmit_after must be >= 1 check")
        if not 0 <= min_size <= max_size or max_size < 1:
            raise ConfigurationError("need 0 <= min_size <= max_size and max_size >= 1")
        if balancer is None:
            balancer = PowerOfTwoChoices(panic_threshold=0.0, failure_threshold=0, clock=clock)
        elif len(balancer):
            raise ConfigurationError("pass an empty balancer: the Database adds its replicas")
        self._candidates = candidates
        self._primary: _Server = _Server(candidates[0], "primary", max_size)
        self._replicas = [_Server(dsn, "replica", max_size) for dsn in replicas]
        self._balancer: Balancer[_Server] = balancer
        for replica in self._replicas:
            balancer.add(replica)
            balancer.mark_down(replica)  # until its first check passes
        self._max_lag = float(max_lag)
        self._fallback = fallback_to_primary
        self._max_fallback = (
            max(1, max_size // 2) if max_fallback_reads is None else max_fallback_reads
        )
        self._fallback_in_flight = 0
        self._track_writes = read_your_writes
        self._ryw_timeout = float(read_your_writes_timeout)
        self._check_interval = float(check_interval)
        self._check_timeout = float(check_timeout)
        self._readmit_after = readmit_after
        self._codec = TokenCodec(token_secret)
        self._acquire_timeout = float(acquire_timeout)
        self._connect_timeout = float(connect_timeout)
        self._clock = clock
        options = dict(pool_options)
        if pgbouncer:
            options["statement_cache_size"] = 0
        self._pool_options = {"min_size": min_size, "max_size": max_size, **options}
        self._max_size = max_size
        self._scope: ContextVar[_Scope | None] = ContextVar(
            f"scalekit.db.scope.{id(self):x}", default=None
        )
        self._monitor: asyncio.Task[None] | None = None
        self._discovery: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._opened = False
        self._closed = False
        apg = self._asyncpg
        # errors that mean "this server is unreachable", as opposed to an error in the query
        self._conn_errors: tuple[type[BaseException], ...] = (
            OSError,
            apg.exceptions.PostgresConnectionError,
            apg.exceptions.ConnectionDoesNotExistError,
            apg.exceptions.CannotConnectNowError,
            apg.exceptions.TooManyConnectionsError,
            _Unavailable,
        )
        self._read_only_error: type[BaseException] = apg.exceptions.ReadOnlySQLTransactionError
        self._tracer = _telemetry.tracer()
        # a proxy tracer without an SDK makes no-op spans: skip creating them on the hot path
        self._trace_always = not (_PROVIDER_GLOBAL and isinstance(self._tracer, trace.ProxyTracer))
        self._now = _monotonic(clock)
        self._balancer_now = _monotonic(balancer._clock)
        self._same_clock = balancer._clock is clock
        meter = _telemetry.meter()
        self._reads = meter.create_counter(
            "scalekit.db.reads", unit="{read}", description="Reads, by the role that served them"
        )
        self._fallbacks = meter.create_counter(
            "scalekit.db.fallbacks",
            unit="{read}",
            description="Reads sent to the primary because no replica could serve them, by reason",
        )
        self._duration = meter.create_histogram(
            "db.client.operation.duration", unit="s", description="Duration of database operations"
        )
        meter.create_observable_gauge(
            "scalekit.db.replica.lag",
            callbacks=[self._observe_lag],
            unit="s",
            description="Replication lag of each replica at its last check",
        )
        self._role_attrs = {
            role: {"db.system.name": "postgresql", "scalekit.db.role": role}
            for role in ("primary", "replica")
        }
        self._replica_attrs = self._role_attrs["replica"]
        self._default_reads = Handle(self, "replica")
        self._primary_handle = Handle(self, "primary")

    # -- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> Database:
        """Find the primary, open the pools, check the replicas and start the monitor.

        A replica that cannot be reached does not prevent opening: it stays out of rotation
        until the monitor reaches it.

        Raises:
            PrimaryNotFoundError: no candidate is a reachable, writable primary.
        """
        if self._opened:
            return self
        self._opened = True
        try:
            await self._discover()
            await asyncio.gather(*(self._open_replica(r) for r in self._replicas))
            await self.check_replicas()
        except BaseException:
            await self.aclose()
            raise
        if self._replicas:
            self._monitor = asyncio.create_task(self._monitor_loop(), name="scalekit.db.monitor")
        return self

    async def aclose(self) -> None:
        """Stop the monitor and close every pool (idempotent)."""
        if self._closed:
            return
        self._closed = True
        tasks = [t for t in (self._monitor, self._discovery, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for server in (self._primary, *self._replicas):
            self._drop_monitor(server)  # the gate's timer stays: waiters still time out
        await asyncio.gather(
            *(self._close_pool(s.pool) for s in (self._primary, *self._replicas) if s.pool),
            return_exceptions=True,
        )

    async def __aenter__(self) -> Database:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _create_pool(self, dsn: str) -> asyncpg.Pool[Any]:
        pool: asyncpg.Pool[Any] = await self._asyncpg.create_pool(
            dsn, timeout=self._connect_timeout, **self._pool_options
        )
        return pool

    async def _close_pool(self, pool: asyncpg.Pool[Any]) -> None:
        try:
            await asyncio.wait_for(pool.close(), self._connect_timeout)
        except (Exception, asyncio.CancelledError):
            pool.terminate()

    async def _open_replica(self, replica: _Server) -> None:
        try:
            replica.pool = await self._create_pool(replica.dsn)
        except Exception as exc:
            self._replica_failed(replica, exc)

    # -- primary discovery and failover ---------------------------------------------------------

    async def _discover(self) -> None:
        errors: list[str] = []
        found: str | None = None
        for dsn in self._candidates:
            try:
                conn = await self._asyncpg.connect(dsn, timeout=self._connect_timeout)
            except Exception as exc:
                errors.append(
                    f"{_Server(dsn, 'primary').name}: {redact_text(str(exc)) or type(exc).__name__}"
                )
                continue
            try:
                in_recovery = await conn.fetchval(
                    "SELECT pg_is_in_recovery()", timeout=self._check_timeout
                )
            except Exception as exc:
                errors.append(f"{_Server(dsn, 'primary').name}: {type(exc).__name__}")
                continue
            finally:
                with contextlib.suppress(Exception):
                    await conn.close(timeout=self._connect_timeout)
            if not in_recovery:
                found = dsn
                break
            errors.append(f"{_Server(dsn, 'primary').name}: read-only (in recovery)")
        if found is None:
            raise PrimaryNotFoundError(
                "no primary candidate is reachable and writable ("
                + "; ".join(errors)
                + "); check the servers or the primary= list, then retry"
            )
        current = self._primary
        if current.pool is not None and current.dsn == found:
            await current.pool.expire_connections()  # same address, maybe a different server now
            return
        server = _Server(found, "primary", self._max_size)
        server.pool = await self._create_pool(found)
        self._primary = server
        if current.pool is not None:
            _log.warning("primary moved from %s to %s", current.name, server.name)
            self._drop_monitor(current)
            self._spawn(self._close_pool(current.pool))

    def _rediscover(self) -> None:
        if self._discovery is None and not self._closed:
            self._discovery = task = asyncio.get_running_loop().create_task(self._discover())
            task.add_done_callback(self._discovery_done)

    def _discovery_done(self, task: asyncio.Task[None]) -> None:
        self._discovery = None
        if not task.cancelled() and task.exception() is not None:
            _log.warning("primary discovery failed: %s", task.exception())

    async def _primary_server(self) -> _Server:
        if self._primary.pool is None and self._discovery is None:
            state = "closed" if self._closed else "not open"
            raise DatabaseError(
                f"the Database is {state}: use `async with Database(...) as db:` or "
                "`await db.open()` (in the application's lifespan) before querying"
            )
        if self._discovery is not None:
            await asyncio.shield(self._discovery)
        return self._primary

    def _check_primary_error(self, exc: BaseException) -> None:
        """Translate a write on a read-only server; start rediscovery on connection loss."""
        if isinstance(exc, self._read_only_error):
            self._rediscover()
            raise ReadOnlyPrimaryError(
                f"the primary {self._primary.name} is read-only (a failover or demotion "
                "happened); the write was not applied. Rediscovering the primary: retry the write."
            ) from exc
        if isinstance(exc, self._conn_errors) and len(self._candidates) > 1:
            self._rediscover()

    # -- connections ----------------------------------------------------------------------------

    async def _acquire(self, server: _Server) -> _Connection:
        pool = server.pool
        if pool is None:
            raise _Unavailable(f"{server.name} has no pool (it was unreachable)")
        # Take a turn at the server's gate first: while at most max_size callers hold or await a
        # connection of this pool, asyncpg hands each a free one without queueing (opening it,
        # if needed, is bounded by connect_timeout), so pool.acquire() needs no timeout; callers
        # beyond that wait at the gate, bounded by acquire_timeout with one shared timer rather
        # than an asyncio.timeout (a timer armed and cancelled) per call.
        if server.free:
            server.free -= 1
        else:
            await server.wait_turn(self._acquire_timeout)
        try:
            conn = await pool.acquire()
        except BaseException:
            server.pass_turn()
            raise
        return conn

    async def _release(self, server: _Server, conn: _Connection) -> None:
        pool = server.pool
        if pool is None:
            return
        try:
            # no release timeout: it would cost two asyncio timeouts per call; the reset query is
            # bounded by the pool's command_timeout like any other statement
            await pool.release(conn)
        except Exception:  # a broken connection: the pool replaces it
            _log.debug("release failed on %s", server.name, exc_info=True)
        finally:
            server.pass_turn()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- writes ---------------------------------------------------------------------------------

    async def _write(
        self, method: str, query: str, args: tuple[Any, ...], kw: dict[str, Any]
    ) -> Any:
        server = await self._primary_server()
        span = self._start_span(method, query, server)
        started = self._clock.monotonic()
        try:
            conn = await self._acquire(server)
            try:
                result = await getattr(conn, method)(query, *args, **kw)
                if self._track_writes and not conn.is_in_transaction():
                    self._note_write(await conn.fetchval(_WRITE_LSN))
            finally:
                await self._release(server, conn)
        except BaseException as exc:
            self._end_span_error(span, exc)
            self._check_primary_error(exc)
            raise
        self._duration.record(self._clock.monotonic() - started, self._role_attrs["primary"])
        if span is not None:
            span.end()
        return result

    def _note_write(self, lsn: int | None) -> None:
        if lsn is None:
            return
        scope = self._scope.get()
        if scope is None:
            self._scope.set(_Scope(lsn))
        elif lsn > scope.lsn:
            scope.lsn = lsn

    # -- reads ----------------------------------------------------------------------------------

    def _choose(self, need: int, max_lag: float | None) -> _Server | None:
        if not need and max_lag is None:
            return self._balancer.try_choose()
        if max_lag is not None and (not isinstance(max_lag, (int, float)) or not max_lag >= 0):
            raise ConfigurationError(f"max_lag must be a number of seconds >= 0, got {max_lag!r}")
        now = self._clock.monotonic()

        def fresh(replica: _Server) -> bool:
            return replica.replay_lsn >= need and (
                max_lag is None or replica.staleness(now) <= max_lag
            )

        return self._balancer.try_choose(fresh)

    async def _read(
        self,
        method: str,
        query: str,
        args: tuple[Any, ...],
        kw: dict[str, Any],
        max_lag: float | None,
    ) -> Any:
        scope = self._scope.get()
        need = scope.lsn if scope is not None else 0
        if max_lag is not None:
            return await self._read_routed(method, query, args, kw, max_lag, need)
        # The hot path, inlined: choose a replica and check its replayed position in one
        # synchronous step (no await between), count the call on the balancer's node without a
        # Lease object, reuse one clock reading for the balancer and the duration metric, and
        # skip span creation while tracing is a no-op.
        balancer = self._balancer
        now = self._balancer_now()
        node = balancer._choose_any(now)
        if node is None or node.endpoint.replay_lsn < need:
            return await self._read_routed(method, query, args, kw, None, need)
        replica: _Server = node.endpoint
        pool = replica.pool
        node.outstanding += 1
        span = (
            self._start_span(method, query, replica)
            if self._trace_always or trace._TRACER_PROVIDER is not None
            else None
        )
        started = now if self._same_clock else self._now()
        try:
            if pool is None:
                raise _Unavailable(f"{replica.name} has no pool (it was unreachable)")
            # the gate of _acquire, inlined
            if replica.free:
                replica.free -= 1
            else:
                await replica.wait_turn(self._acquire_timeout)
            try:
                conn = await pool.acquire()
            except BaseException:
                replica.pass_turn()
                raise
            try:
                result = await getattr(conn, method)(query, *args, **kw)
            finally:
                try:
                    await pool.release(conn)
                except Exception:  # a broken connection: the pool replaces it
                    _log.debug("release failed on %s", replica.name, exc_info=True)
                finally:
                    replica.pass_turn()
        except BaseException as exc:
            failed = isinstance(exc, self._conn_errors)
            balancer._finish(node, now, self._balancer_now(), not failed)
            self._end_span_error(span, exc)
            if not failed:
                raise
            return await self._read_again(replica, exc, method, query, args, kw, need)
        end = self._balancer_now()
        balancer._finish(node, now, end, True)
        attrs = self._replica_attrs
        self._duration.record((end if self._same_clock else self._now()) - started, attrs)
        self._reads.add(1, attrs)
        if span is not None:
            span.end()
        return result

    async def _read_again(
        self,
        replica: _Server,
        exc: BaseException,
        method: str,
        query: str,
        args: tuple[Any, ...],
        kw: dict[str, Any],
        need: int,
    ) -> Any:
        """After a connection-level failure on ``replica``: one more replica, then the primary."""
        self._replica_failed(replica, exc)
        other = self._choose(need, None)
        if other is not None:
            try:
                return await self._run_on_replica(other, None, method, query, args, kw)
            except self._conn_errors as exc2:
                self._replica_failed(other, exc2)
        return await self._read_primary(method, query, args, kw, "replica_failed")

    async def _read_routed(
        self,
        method: str,
        query: str,
        args: tuple[Any, ...],
        kw: dict[str, Any],
        max_lag: float | None,
        need: int,
    ) -> Any:
        replica = self._choose(need, max_lag)
        if replica is not None:
            try:
                return await self._run_on_replica(replica, None, method, query, args, kw)
            except self._conn_errors as exc:
                self._replica_failed(replica, exc)
                replica = self._choose(need, max_lag)  # one more replica, then the primary
                if replica is not None:
                    try:
                        return await self._run_on_replica(replica, None, method, query, args, kw)
                    except self._conn_errors as exc2:
                        self._replica_failed(replica, exc2)
                return await self._read_primary(method, query, args, kw, "replica_failed")
        if need and self._replicas:
            caught_up = await self._wait_for_replay(need, max_lag)
            if caught_up is not None:
                replica, conn = caught_up
                return await self._run_on_replica(replica, conn, method, query, args, kw)
            return await self._read_primary(method, query, args, kw, "behind")
        if max_lag is not None and self._has_available_replica():
            return await self._read_primary(method, query, args, kw, "stale")
        return await self._read_primary(method, query, args, kw, "no_replica")

    def _has_available_replica(self) -> bool:
        return self._balancer.try_choose() is not None

    async def _run_on_replica(
        self,
        replica: _Server,
        conn: _Connection,
        method: str,
        query: str,
        args: tuple[Any, ...],
        kw: dict[str, Any],
    ) -> Any:
        lease = self._balancer.lease_on(replica)
        span = self._start_span(method, query, replica)
        started = self._clock.monotonic()
        try:
            if conn is None:
                conn = await self._acquire(replica)
            try:
                result = await getattr(conn, method)(query, *args, **kw)
            finally:
                await self._release(replica, conn)
        except BaseException as exc:
            lease.release(success=not isinstance(exc, self._conn_errors))
            self._end_span_error(span, exc)
            raise
        lease.release()
        self._duration.record(self._clock.monotonic() - started, self._role_attrs["replica"])
        self._reads.add(1, self._role_attrs["replica"])
        if span is not None:
            span.end()
        return result

    async def _read_primary(
        self, method: str, query: str, args: tuple[Any, ...], kw: dict[str, Any], reason: str
    ) -> Any:
        capped = self._enter_fallback(reason)
        try:
            server = await self._primary_server()
            span = self._start_span(method, query, server)
            started = self._clock.monotonic()
            try:
                conn = await self._acquire(server)
                try:
                    result = await getattr(conn, method)(query, *args, **kw)
                finally:
                    await self._release(server, conn)
            except BaseException as exc:
                self._end_span_error(span, exc)
                self._check_primary_error(exc)
                raise
            self._duration.record(self._clock.monotonic() - started, self._role_attrs["primary"])
            self._reads.add(1, self._role_attrs["primary"])
            if span is not None:
                span.end()
            return result
        finally:
            if capped:
                self._fallback_in_flight -= 1

    def _enter_fallback(self, reason: str) -> bool:
        """Account for a read sent to the primary; returns whether it counts against the cap."""
        if not self._replicas:
            return False
        if reason in ("no_replica", "replica_failed"):
            if not self._fallback:
                raise NoReplicaAvailableError(
                    f"no replica is healthy and within max_lag ({self._status_text()}), and "
                    "fallback_to_primary is off; retry later or read from db.primary"
                )
            if self._fallback_in_flight >= self._max_fallback:
                raise NoReplicaAvailableError(
                    f"no replica is usable ({self._status_text()}) and {self._max_fallback} reads "
                    "are already falling back to the primary (max_fallback_reads), so this one was "
                    "shed to protect the primary; retry later"
                )
            self._fallback_in_flight += 1
            self._fallbacks.add(1, {"reason": reason})
            return True
        if not self._fallback:
            raise NoReplicaAvailableError(
                f"no replica has replayed this scope's writes or is fresh enough ({reason}), and "
                "fallback_to_primary is off; retry later or read from db.primary"
            )
        self._fallbacks.add(1, {"reason": reason})
        return False

    def _status_text(self) -> str:
        now = self._clock.monotonic()
        parts = [f"{s.name}: {s.status(now).reason or 'available'}" for s in self._replicas]
        return "; ".join(parts) or "no replicas configured"

    async def _wait_for_replay(
        self, need: int, max_lag: float | None
    ) -> tuple[_Server, _Connection] | None:
        """Find a replica that has replayed ``need``, checking live and waiting a bounded time.

        Returns the replica with a held connection on which the position was verified (replay
        only moves forward, so any query on it afterwards sees the write), or ``None``.
        """
        now = self._clock.monotonic()

        def usable(replica: _Server) -> bool:
            return max_lag is None or replica.staleness(now) <= max_lag

        replica = self._balancer.try_choose(usable)
        if replica is None:
            return None
        try:
            conn = await self._acquire(replica)
        except self._conn_errors as exc:
            self._replica_failed(replica, exc)
            return None
        deadline = self._clock.monotonic() + self._ryw_timeout
        try:
            while True:
                lsn = await conn.fetchval(_REPLAY_LSN)
                if lsn is None:  # promoted: not a replica any more
                    raise _Unavailable(f"{replica.name} is no longer in recovery")
                if lsn > replica.replay_lsn:
                    replica.replay_lsn = lsn
                if lsn >= need:
                    return replica, conn
                remaining = deadline - self._clock.monotonic()
                if remaining <= 0:
                    break
                await self._clock.sleep(min(_POLL_INTERVAL, remaining))
        except self._conn_errors as exc:
            self._replica_failed(replica, exc)
        except BaseException:
            await self._release(replica, conn)
            raise
        await self._release(replica, conn)
        return None

    async def _read_connection(self, max_lag: float | None) -> _Held:
        """A connection for a read-only unit of work, routed like a single read."""
        scope = self._scope.get()
        need = scope.lsn if scope is not None else 0
        replica = self._choose(need, max_lag)
        if replica is not None:
            try:
                conn = await self._acquire(replica)
                return _Held(replica, conn, self._balancer.lease_on(replica), False)
            except self._conn_errors as exc:
                self._replica_failed(replica, exc)
            reason = "replica_failed"
        elif need and self._replicas:
            caught_up = await self._wait_for_replay(need, max_lag)
            if caught_up is not None:
                server, conn = caught_up
                return _Held(server, conn, self._balancer.lease_on(server), False)
            reason = "behind"
        elif max_lag is not None and self._has_available_replica():
            reason = "stale"
        else:
            reason = "no_replica"
        capped = self._enter_fallback(reason)  # held until the connection is released
        try:
            server = await self._primary_server()
            return _Held(server, await self._acquire(server), None, capped)
        except BaseException:
            if capped:
                self._fallback_in_flight -= 1
            raise

    async def _release_held(self, held: _Held) -> None:
        if held.lease is not None:
            held.lease.release()
            held.lease = None
        if held.capped:
            held.capped = False
            self._fallback_in_flight -= 1
        await self._release(held.server, held.conn)

    # -- health monitor -------------------------------------------------------------------------

    def _replica_failed(self, replica: _Server, exc: BaseException) -> None:
        reason = f"unreachable: {redact_text(str(exc)) or type(exc).__name__}"
        if replica.available:
            _log.warning("replica %s left rotation: %s", replica.name, reason)
        replica.available = False
        replica.good_checks = 0
        replica.reason = reason
        self._balancer.mark_down(replica)

    async def check_replicas(self) -> list[ReplicaStatus]:
        """Check every replica now (the monitor does this every ``check_interval``).

        Returns:
            The status of every replica after the check.
        """
        primary_lsn: int | None = None
        server = self._primary
        if server.pool is not None and self._replicas:
            try:
                async with asyncio.timeout(self._check_timeout):
                    conn = await self._monitor_connection(server)
                    primary_lsn = await conn.fetchval(_CHECK_PRIMARY)
                if primary_lsn is None and self._discovery is None:
                    _log.warning("primary %s is in recovery; rediscovering", server.name)
                    self._rediscover()
            except (Exception, TimeoutError) as exc:
                self._drop_monitor(server)
                _log.warning("primary %s check failed: %r", server.name, exc)
                if len(self._candidates) > 1:
                    self._rediscover()
        await asyncio.gather(*(self._check_replica(r, primary_lsn) for r in self._replicas))
        return self.replica_status()

    async def _monitor_connection(self, server: _Server) -> _Connection:
        # a dedicated connection: a hung check is terminated without touching the pool
        conn = server.monitor
        if conn is None or conn.is_closed():
            conn = server.monitor = await self._asyncpg.connect(
                server.dsn, timeout=self._connect_timeout
            )
            # a new session may reach a different (rebuilt) server: forget what the old one had
            # replayed, so its position is learnt afresh instead of trusted
            server.replay_lsn = 0
        return conn

    @staticmethod
    def _drop_monitor(server: _Server) -> None:
        if server.monitor is not None:
            server.monitor.terminate()
            server.monitor = None

    async def _check_replica(self, replica: _Server, primary_lsn: int | None) -> None:
        try:
            async with asyncio.timeout(self._check_timeout):
                conn = await self._monitor_connection(replica)
                in_recovery, lsn, lag = await conn.fetchrow(_CHECK_REPLICA)
                if replica.pool is None:
                    replica.pool = await self._create_pool(replica.dsn)
        except (Exception, TimeoutError) as exc:
            self._drop_monitor(replica)
            self._replica_failed(replica, exc)
            return
        now = self._clock.monotonic()
        if not in_recovery:
            self._take_out(replica, "not in recovery (promoted?): not a replica")
            return
        replica.checked_at = now
        replica.replay_lsn = max(replica.replay_lsn, lsn or 0)
        if primary_lsn is not None and lsn is not None and lsn >= primary_lsn:
            replica.lag = 0.0
        elif lag is None:
            replica.lag = math.inf  # nothing replayed since it started
        else:
            replica.lag = max(0.0, float(lag))
        if replica.lag > self._max_lag:
            self._take_out(replica, f"lag {replica.lag:.1f}s exceeds max_lag {self._max_lag:g}s")
            return
        replica.good_checks += 1
        first = replica.reason == "not checked yet"
        if not replica.available and (first or replica.good_checks >= self._readmit_after):
            replica.available = True
            replica.reason = None
            self._balancer.mark_up(replica)
            if not first:
                _log.warning("replica %s is back in rotation", replica.name)

    def _take_out(self, replica: _Server, reason: str) -> None:
        if replica.available:
            _log.warning("replica %s left rotation: %s", replica.name, reason)
        replica.available = False
        replica.good_checks = 0
        replica.reason = reason
        self._balancer.mark_down(replica)

    async def _monitor_loop(self) -> None:
        while True:
            await self._clock.sleep(self._check_interval)
            try:
                await self.check_replicas()
            except Exception:  # never let the monitor die
                _log.exception("replica check failed")

    def replica_status(self) -> list[ReplicaStatus]:
        """The status of every replica as last checked (for health endpoints and tests)."""
        now = self._clock.monotonic()
        return [replica.status(now) for replica in self._replicas]

    def _observe_lag(self, options: CallbackOptions) -> list[Observation]:
        return [
            Observation(r.lag, {"server.address": r.host, "server.port": r.port})
            for r in self._replicas
            if not math.isinf(r.lag)
        ]

    # -- telemetry ------------------------------------------------------------------------------

    def _start_span(self, method: str, query: str, server: _Server) -> Any:
        if not (self._trace_always or _tracer_provider_set()):
            return None
        span = self._tracer.start_span("postgresql", kind=SpanKind.CLIENT)
        if not span.is_recording():
            return None
        operation = query.lstrip().split(None, 1)[0].upper() if query.strip() else method
        span.update_name(f"{operation} {server.role}")
        span.set_attributes(server.attributes)
        span.set_attribute("db.operation.name", operation)
        span.set_attribute("db.query.text", query)
        return span

    @staticmethod
    def _end_span_error(span: Any, exc: BaseException) -> None:
        if span is None:
            return
        span.set_attribute("error.type", type(exc).__qualname__)
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        span.end()

    # -- public API -----------------------------------------------------------------------------

    @property
    def primary(self) -> Handle:
        """The primary: every call runs there and records the WAL position for later reads."""
        return self._primary_handle

    def replica(self, *, max_lag: float | None = None) -> Handle:
        """A handle whose calls read from a replica (or the primary when none can serve).

        Args:
            max_lag: bounded staleness for these reads: only a replica whose data is at most this
                many seconds old (last measured lag + time since the measurement) serves them.
        """
        if max_lag is None:
            return self._default_reads
        if not max_lag >= 0:
            raise ConfigurationError("max_lag must be >= 0 seconds")
        return Handle(self, "replica", max_lag)

    async def fetch(
        self,
        query: str,
        *args: Any,
        timeout: float | None = None,
        max_lag: float | None = None,
    ) -> list[Any]:
        """Read every row from a replica (see :meth:`replica`)."""
        kw = _NO_KW if timeout is None else {"timeout": timeout}
        result: list[Any] = await self._read("fetch", query, args, kw, max_lag)
        return result

    async def fetchrow(
        self,
        query: str,
        *args: Any,
        timeout: float | None = None,
        max_lag: float | None = None,
    ) -> Any:
        """Read the first row (or ``None``) from a replica (see :meth:`replica`)."""
        kw = _NO_KW if timeout is None else {"timeout": timeout}
        return await self._read("fetchrow", query, args, kw, max_lag)

    async def fetchval(
        self,
        query: str,
        *args: Any,
        column: int = 0,
        timeout: float | None = None,
        max_lag: float | None = None,
    ) -> Any:
        """Read one value (or ``None``) from a replica (see :meth:`replica`)."""
        kw = _NO_KW if column == 0 and timeout is None else {"column": column, "timeout": timeout}
        return await self._read("fetchval", query, args, kw, max_lag)

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        """Run a statement on the primary and record its WAL position in the current scope.

        Raises:
            ReadOnlyPrimaryError: the primary turned read-only (failover); retry the write.
        """
        result: str = await self._write("execute", query, args, {"timeout": timeout})
        return result

    async def executemany(
        self,
        command: str,
        args: Sequence[Sequence[Any]],
        *,
        timeout: float | None = None,
    ) -> None:
        """Run a statement once per argument tuple on the primary."""
        await self._write("executemany", command, (args,), {"timeout": timeout})

    def transaction(
        self,
        *,
        readonly: bool = False,
        isolation: str | None = None,
        deferrable: bool = False,
        max_lag: float | None = None,
    ) -> Transaction:
        """A transaction: ``async with db.transaction() as conn: await conn.execute(...)``.

        Args:
            readonly: a read-only transaction, which may run on a replica (routed like a read).
            isolation: ``"read_committed"``, ``"repeatable_read"`` or ``"serializable"``
                (``serializable`` is not available on replicas).
            deferrable: for serializable read-only transactions.
            max_lag: bounded staleness when ``readonly`` (see :meth:`replica`).
        """
        return Transaction(
            self, readonly=readonly, isolation=isolation, deferrable=deferrable, max_lag=max_lag
        )

    def consistency_token(self) -> str:
        """An opaque, signed token of the current scope's writes, for a cookie or a header.

        Pass it to :meth:`consistent_with` in the next request, or in another service that
        shares ``token_secret``, to read those writes there too.
        """
        scope = self._scope.get()
        return self._codec.encode(scope.lsn if scope is not None else 0)

    def consistent_with(self, token: str | None) -> ConsistencyScope:
        """``async with``: reads in the block see the writes behind ``token`` (and this scope's).

        Args:
            token: a token from :meth:`consistency_token`; ``None`` or ``""`` adds nothing.

        Raises:
            InvalidConsistencyTokenError: the token is malformed or its signature does not verify.
        """
        lsn = self._codec.decode(token) if token else 0
        scope = self._scope.get()
        if scope is not None:
            lsn = max(lsn, scope.lsn)
        return ConsistencyScope(self._scope, lsn)

    def consistency_scope(self, token: str | None = None) -> ConsistencyScope:
        """``async with``: a fresh read-your-writes scope (one request), seeded from ``token``.

        Unlike :meth:`consistent_with` it does not inherit the enclosing scope's writes: this is
        what :class:`scalekit.db.ConsistencyMiddleware` opens around each request.

        Raises:
            InvalidConsistencyTokenError: the token is malformed or its signature does not verify.
        """
        return ConsistencyScope(self._scope, self._codec.decode(token) if token else 0)

    @property
    def required_lsn(self) -> int:
        """The WAL position reads in the current scope must see (0: none)."""
        scope = self._scope.get()
        return scope.lsn if scope is not None else 0

    @property
    def primary_name(self) -> str:
        """The redacted DSN of the current primary."""
        return self._primary.name

    def __repr__(self) -> str:
        replicas = ", ".join(r.name for r in self._replicas)
        return f"Database(primary={self._primary.name!r}, replicas=[{replicas}])"
