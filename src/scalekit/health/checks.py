"""Built-in checks for Redis, PostgreSQL, RabbitMQ, circuit breakers and the event loop.

Each factory returns a :class:`BuiltinCheck`, an async callable to pass to
:meth:`HealthRegistry.add <scalekit.health.HealthRegistry.add>`. They take the client the
application already has (a ``redis.asyncio`` client, an asyncpg pool, an aio-pika connection);
the PostgreSQL and RabbitMQ checks also accept a URL and then open (and close) a connection per
run. Drivers are imported only when a check needs one, never when this module is imported.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Protocol

from scalekit._drivers import require
from scalekit.errors import ConfigurationError
from scalekit.health._model import CheckResult, Status

__all__ = [
    "BreakerLike",
    "BuiltinCheck",
    "EventLoopMonitor",
    "breaker_state",
    "event_loop_lag",
    "postgres_query",
    "postgres_replica_lag",
    "rabbitmq_connection",
    "rabbitmq_queue_depth",
    "redis_cluster_state",
    "redis_ping",
    "sharded_database",
]

DATASTORE = "datastore"
COMPONENT = "component"
SYSTEM = "system"


class BuiltinCheck:
    """An async callable check that also tells the registry its ``componentType``.

    Args:
        fn: the coroutine function doing the work.
        component_type: the draft's ``componentType`` for this check's entries.
        description: a short human description (used in ``repr``).
    """

    __slots__ = ("_fn", "component_type", "description")

    def __init__(
        self,
        fn: Callable[[], Awaitable[CheckResult | None]],
        component_type: str,
        description: str,
    ) -> None:
        self._fn = fn
        self.component_type = component_type
        self.description = description

    async def __call__(self) -> CheckResult | None:
        """Run the check once."""
        return await self._fn()

    def __repr__(self) -> str:
        return f"<BuiltinCheck {self.description}>"


class BreakerLike(Protocol):
    """Anything with a ``state`` whose value or name is ``open``, ``half_open`` or ``closed``."""

    @property
    def state(self) -> Any:
        """The current state (an enum, or a string)."""
        ...


class _Fetcher(Protocol):
    async def fetchval(self, query: str, *args: Any) -> Any: ...


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _latency(
    elapsed: float, warn_after: float | None, what: str, component_id: str | None = None
) -> CheckResult:
    if warn_after is not None and elapsed > warn_after:
        return CheckResult(
            Status.WARN,
            _ms(elapsed),
            "ms",
            f"{what} took {_ms(elapsed):g} ms (warn above {_ms(warn_after):g} ms)",
            component_id=component_id,
        )
    return CheckResult(Status.PASS, _ms(elapsed), "ms", component_id=component_id)


def _positive(name: str, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ConfigurationError(f"{name} must be a finite number >= 0, got {value!r}")


def _thresholds(warn_name: str, warn: float | None, fail_name: str, fail: float | None) -> None:
    _positive(warn_name, warn)
    _positive(fail_name, fail)
    if warn is not None and fail is not None and warn > fail:
        raise ConfigurationError(f"{warn_name} ({warn}) must not exceed {fail_name} ({fail})")


def _graded(
    value: float,
    unit: str,
    warn: float | None,
    fail: float | None,
    what: str,
) -> CheckResult:
    if fail is not None and value > fail:
        return CheckResult(
            Status.FAIL, value, unit, f"{what} is {value:g} {unit} (fail above {fail:g})"
        )
    if warn is not None and value > warn:
        return CheckResult(
            Status.WARN, value, unit, f"{what} is {value:g} {unit} (warn above {warn:g})"
        )
    return CheckResult(Status.PASS, value, unit)


# -- Redis ----------------------------------------------------------------------------------------


def redis_ping(client: Any, *, warn_after: float | None = None) -> BuiltinCheck:
    """PING a Redis server (``redis.asyncio.Redis`` or ``RedisCluster``).

    Observed value: the round trip in ms.

    Args:
        client: the application's ``redis.asyncio`` client.
        warn_after: seconds above which a successful PING reports ``warn``.

    Raises:
        TypeError: ``client`` has no ``ping`` method.
    """
    if not callable(getattr(client, "ping", None)):
        raise TypeError(f"redis_ping needs a redis.asyncio client, got {type(client).__name__}")
    _positive("warn_after", warn_after)

    async def check() -> CheckResult:
        start = asyncio.get_running_loop().time()
        reply = await client.ping()
        elapsed = asyncio.get_running_loop().time() - start
        if reply is not True and reply not in (b"PONG", "PONG"):
            return CheckResult(Status.FAIL, output=f"unexpected PING reply {reply!r}")
        return _latency(elapsed, warn_after, "PING")

    return BuiltinCheck(check, DATASTORE, "redis ping")


def redis_cluster_state(cluster: Any) -> BuiltinCheck:
    """Read ``CLUSTER INFO`` from a ``redis.asyncio.RedisCluster`` and check ``cluster_state``.

    Passes when the cluster reports ``ok`` with every slot served; fails when it reports
    ``fail`` (slots uncovered); warns when some slots are in ``pfail`` (a node looks down).
    Observed value: the number of slots served ok (of 16384).

    Args:
        cluster: the application's ``redis.asyncio.RedisCluster``.

    Raises:
        TypeError: ``cluster`` has no ``cluster_info`` method.
    """
    if not callable(getattr(cluster, "cluster_info", None)):
        raise TypeError(
            f"redis_cluster_state needs a redis.asyncio.RedisCluster, got {type(cluster).__name__}"
        )

    async def check() -> CheckResult:
        info = await cluster.cluster_info()
        state = str(info.get("cluster_state", "unknown"))
        slots_ok = int(info.get("cluster_slots_ok", 0))
        pfail = int(info.get("cluster_slots_pfail", 0))
        failed = int(info.get("cluster_slots_fail", 0))
        if state != "ok":
            return CheckResult(
                Status.FAIL,
                slots_ok,
                "slots",
                f"cluster_state is {state!r}: {failed} slots failed, {pfail} possibly failing",
            )
        if pfail or failed:
            return CheckResult(
                Status.WARN, slots_ok, "slots", f"{pfail} slots possibly failing, {failed} failed"
            )
        return CheckResult(Status.PASS, slots_ok, "slots")

    return BuiltinCheck(check, DATASTORE, "redis cluster state")


# -- PostgreSQL -----------------------------------------------------------------------------------


async def _pg_fetch(source: Any, query: str, row: bool) -> Any:
    if isinstance(source, str):
        asyncpg = require("asyncpg")
        conn = await asyncpg.connect(source)
        try:
            return await (conn.fetchrow(query) if row else conn.fetchval(query))
        finally:
            # close() waits for the server; terminate() if we are being cancelled (timeout)
            try:
                await conn.close(timeout=1.0)
            except BaseException:
                conn.terminate()
                raise
    return await (source.fetchrow(query) if row else source.fetchval(query))


def _pg_source(source: Any, fn: str) -> None:
    if isinstance(source, str):
        if not source.startswith(("postgres://", "postgresql://")) and "=" not in source:
            raise ConfigurationError(
                f"{fn} needs an asyncpg pool or connection or a postgresql:// DSN, "
                f"got the string {source[:20]!r}..."
            )
        return
    if not callable(getattr(source, "fetchval", None)):
        raise TypeError(
            f"{fn} needs an asyncpg pool or connection or a DSN, got {type(source).__name__}"
        )


def postgres_query(
    source: Any, query: str = "SELECT 1", *, warn_after: float | None = None
) -> BuiltinCheck:
    """Run ``query`` on PostgreSQL; passes when it returns without error.

    Pass the application's asyncpg pool (the check then also proves a connection can be
    acquired), a connection, or a DSN (a fresh connection per run, closed afterwards).
    Observed value: the round trip in ms.

    Args:
        source: an ``asyncpg.Pool``, ``asyncpg.Connection`` or ``postgresql://`` DSN.
        query: a cheap read-only statement.
        warn_after: seconds above which a successful query reports ``warn``.

    Raises:
        TypeError: ``source`` is not a pool, connection or DSN.
        ConfigurationError: the DSN string is not a PostgreSQL DSN.
    """
    _pg_source(source, "postgres_query")
    _positive("warn_after", warn_after)

    async def check() -> CheckResult:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await _pg_fetch(source, query, row=False)
        return _latency(loop.time() - start, warn_after, "the query")

    return BuiltinCheck(check, DATASTORE, "postgres query")


_REPLICA_LAG_SQL = """
SELECT pg_is_in_recovery() AS in_recovery,
       (SELECT status FROM pg_stat_wal_receiver LIMIT 1) AS receiver,
       CASE
         WHEN NOT pg_is_in_recovery() THEN NULL
         WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
         ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0)
       END::float8 AS lag
"""


def postgres_replica_lag(
    source: Any, *, warn_after: float | None = 5.0, fail_after: float | None = 30.0
) -> BuiltinCheck:
    """Check a PostgreSQL replica's replication lag in seconds.

    ``source`` is either an async callable returning the lag in seconds (for example the db
    primitive's replica monitor), or an asyncpg pool/connection/DSN *on the replica*, which is
    then asked with SQL: lag is 0 when everything received has been replayed, else the age of
    the last replayed transaction. A replica whose WAL receiver is not streaming warns (its lag
    is unknown); a server that is not in recovery (promoted) warns too.

    Args:
        source: an async callable returning seconds, or a pool/connection/DSN on the replica.
        warn_after: lag in seconds above which the check warns.
        fail_after: lag in seconds above which the check fails.

    Raises:
        TypeError: ``source`` is none of those.
        ConfigurationError: thresholds are negative or ``warn_after > fail_after``.
    """
    _thresholds("warn_after", warn_after, "fail_after", fail_after)
    if isinstance(source, str) or callable(getattr(source, "fetchrow", None)):
        _pg_source(source, "postgres_replica_lag")

        async def check() -> CheckResult:
            row = await _pg_fetch(source, _REPLICA_LAG_SQL, row=True)
            if not row["in_recovery"]:
                return CheckResult(
                    Status.WARN, None, "s", "the server is not a replica (not in recovery)"
                )
            lag = round(float(row["lag"]), 3)
            if row["receiver"] != "streaming":
                return CheckResult(
                    Status.WARN,
                    lag,
                    "s",
                    f"the WAL receiver is {row['receiver'] or 'not running'}; lag may be stale",
                )
            return _graded(lag, "s", warn_after, fail_after, "replication lag")

    elif callable(source):
        lag_fn: Callable[[], Awaitable[float]] = source

        async def check() -> CheckResult:
            value = await lag_fn()
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"the lag callable returned {value!r}, not seconds")
            return _graded(round(float(value), 3), "s", warn_after, fail_after, "replication lag")

    else:
        raise TypeError(
            "postgres_replica_lag needs an async callable returning seconds, or an asyncpg "
            f"pool/connection/DSN on the replica, got {type(source).__name__}"
        )
    return BuiltinCheck(check, DATASTORE, "postgres replica lag")


def sharded_database(db: Any, *, timeout: float = 2.0, max_down: int | None = None) -> BuiltinCheck:
    """Ask every shard of a :class:`~scalekit.sharding.ShardedDatabase` for ``SELECT 1``.

    All shards answering passes. Some shards down *warns*: only their keys fail (with
    :class:`~scalekit.errors.ShardUnavailableError`), and every instance of the application
    sees the same shards, so taking this one out of rotation would help nobody. More than
    ``max_down`` shards down fails (default: only when none answers). Observed value: the
    shards answering; the output names the others and why.

    Args:
        db: the :class:`~scalekit.sharding.ShardedDatabase` (anything with ``shards`` and
            ``scatter``).
        timeout: seconds each shard may take.
        max_down: shards that may be down before the check fails.

    Raises:
        TypeError: ``db`` has no ``scatter``/``shards``.
        ConfigurationError: a negative ``timeout`` or ``max_down``.
    """
    if not (hasattr(db, "scatter") and hasattr(db, "shards")):
        raise TypeError(f"sharded_database needs a ShardedDatabase, got {type(db).__name__}")
    _positive("timeout", timeout)
    if max_down is not None and (isinstance(max_down, bool) or max_down < 0):
        raise ConfigurationError(f"max_down must be an int >= 0 or None, got {max_down!r}")

    async def check() -> CheckResult:
        shards = db.shards
        result = await db.scatter("SELECT 1", method="fetchval", timeout=timeout)
        errors = result.errors
        up = len(shards) - len(errors)
        if not errors:
            return CheckResult(Status.PASS, up, "shards")
        down = ", ".join(f"{name} ({type(exc).__name__})" for name, exc in errors.items())
        limit = len(shards) - 1 if max_down is None else max_down
        status = Status.FAIL if len(errors) > limit else Status.WARN
        return CheckResult(status, up, "shards", f"{len(errors)} of {len(shards)} down: {down}")

    return BuiltinCheck(check, DATASTORE, "sharded database")


# -- RabbitMQ -------------------------------------------------------------------------------------


async def _with_channel(source: Any, fn: Callable[[Any], Awaitable[Any]]) -> Any:
    if isinstance(source, str):
        aio_pika = require("aio_pika")
        connection = await aio_pika.connect(source)
        try:
            return await _on_fresh_channel(connection, fn)
        finally:
            await connection.close()
    if getattr(source, "is_closed", False):
        raise ConnectionError("the RabbitMQ connection is closed (it may be reconnecting)")
    return await _on_fresh_channel(source, fn)


async def _on_fresh_channel(connection: Any, fn: Callable[[Any], Awaitable[Any]]) -> Any:
    # A fresh channel per run: a passive declare that fails (404) closes its channel, and a
    # robust channel may answer a passive declare from its cache (a stale message count).
    channel = connection.channel()
    await channel.__aenter__()
    try:
        underlay = await channel.get_underlay_channel()
        return await fn(underlay)
    finally:
        with contextlib.suppress(Exception):  # closed by the broker already (404, passive)
            await channel.close()


def _amqp_source(source: Any, fn: str) -> None:
    if isinstance(source, str):
        if not source.startswith(("amqp://", "amqps://")):
            raise ConfigurationError(
                f"{fn} needs an aio-pika connection or an amqp:// URL, got {source[:10]!r}..."
            )
    elif not callable(getattr(source, "channel", None)):
        raise TypeError(f"{fn} needs an aio-pika connection or URL, got {type(source).__name__}")


def rabbitmq_connection(source: Any, *, warn_after: float | None = None) -> BuiltinCheck:
    """Check a RabbitMQ connection by opening (and closing) a fresh channel on it.

    Args:
        source: the application's aio-pika connection, or an ``amqp://`` URL (then a
            connection is opened and closed per run).
        warn_after: seconds above which a successful round trip reports ``warn``.

    Raises:
        TypeError: ``source`` is not an aio-pika connection or URL.
        ConfigurationError: the URL is not ``amqp://``.
    """
    _amqp_source(source, "rabbitmq_connection")
    _positive("warn_after", warn_after)

    async def noop(_: Any) -> None:
        return None

    async def check() -> CheckResult:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await _with_channel(source, noop)
        return _latency(loop.time() - start, warn_after, "opening a channel")

    return BuiltinCheck(check, COMPONENT, "rabbitmq connection")


def rabbitmq_queue_depth(
    source: Any,
    queue: str,
    *,
    warn_above: int | None = None,
    fail_above: int | None = None,
    min_consumers: int = 0,
) -> BuiltinCheck:
    """Check a queue's depth (ready messages) against thresholds, read on a fresh channel.

    A queue that does not exist fails. Observed value: the ready message count.

    Args:
        source: an aio-pika connection or an ``amqp://`` URL.
        queue: the queue name (declared passively: never created by the check).
        warn_above: depth above which the check warns (a backlog building up).
        fail_above: depth above which the check fails.
        min_consumers: warn when fewer consumers are attached (0 disables).

    Raises:
        TypeError: ``source`` is not an aio-pika connection or URL.
        ConfigurationError: the thresholds are inconsistent or the queue name is empty.
    """
    _amqp_source(source, "rabbitmq_queue_depth")
    if not isinstance(queue, str) or not queue or len(queue.encode()) > 255:
        raise ConfigurationError(f"queue must be a queue name of 1-255 bytes, got {queue!r}")
    _thresholds("warn_above", warn_above, "fail_above", fail_above)
    _positive("min_consumers", min_consumers)

    async def declare(channel: Any) -> Any:
        return await channel.queue_declare(queue, passive=True)

    async def check() -> CheckResult:
        ok = await _with_channel(source, declare)
        depth = int(ok.message_count)
        result = _graded(depth, "messages", warn_above, fail_above, f"queue {queue!r} depth")
        if result.status is Status.PASS and int(ok.consumer_count) < min_consumers:
            return CheckResult(
                Status.WARN,
                depth,
                "messages",
                f"queue {queue!r} has {ok.consumer_count} consumers (want {min_consumers})",
            )
        return result

    return BuiltinCheck(check, COMPONENT, f"rabbitmq queue depth {queue!r}")


# -- circuit breakers -----------------------------------------------------------------------------


def _state_name(state: Any) -> str:
    value = getattr(state, "value", state)
    if not isinstance(value, str):
        value = getattr(state, "name", str(state))
    return str(value).strip().lower().replace("-", "_").replace(" ", "_")


def breaker_state(breaker: BreakerLike, *, open_status: Status | str = Status.WARN) -> BuiltinCheck:
    """Report a circuit breaker's state: closed passes, half-open warns, open warns.

    Any object with a ``state`` attribute works (scalekit's breaker, pybreaker, purgatory...):
    its value or name is compared to ``closed``, ``half_open`` and ``open``. An open breaker is
    the breaker doing its job (calls fail fast with a fallback), so it degrades the status
    rather than failing readiness; pass ``open_status="fail"`` to take the instance out of
    rotation instead.

    Args:
        breaker: the breaker to watch.
        open_status: the status reported while the breaker is open.

    Raises:
        TypeError: ``breaker`` has no ``state`` attribute.
    """
    if not hasattr(breaker, "state"):
        raise TypeError(
            f"breaker_state needs an object with a 'state', got {type(breaker).__name__}"
        )
    when_open = Status(open_status)

    async def check() -> CheckResult:
        name = _state_name(breaker.state)
        if name == "closed":
            return CheckResult(Status.PASS, name)
        if name in ("open", "forced_open", "isolated"):
            return CheckResult(when_open, name, None, f"circuit breaker is {name}")
        if name == "half_open":
            return CheckResult(Status.WARN, name, None, "circuit breaker is half-open (probing)")
        return CheckResult(Status.WARN, name, None, f"circuit breaker is in unknown state {name!r}")

    return BuiltinCheck(check, COMPONENT, "circuit breaker state")


# -- event loop -----------------------------------------------------------------------------------


class EventLoopMonitor:
    """Samples event-loop lag in the background: how late a timer fires past its deadline.

    A one-off measurement only sees the loop at the moment of the probe; the monitor remembers
    the worst lag over the last ``window`` samples, so a loop that blocks for 2 s every minute
    shows up. Use it as an async context manager in the application's lifespan::

        async with EventLoopMonitor() as monitor:
            registry.add("eventloop:lag", event_loop_lag(monitor=monitor), groups=("liveness",))

    Args:
        interval: seconds between samples.
        window: how many recent samples ``max_lag`` covers.

    Raises:
        ConfigurationError: ``interval`` is not positive or ``window`` is below 1.
    """

    def __init__(self, *, interval: float = 0.5, window: int = 20) -> None:
        _positive("interval", interval)
        if interval <= 0:
            raise ConfigurationError(f"interval must be > 0, got {interval!r}")
        if not isinstance(window, int) or window < 1:
            raise ConfigurationError(f"window must be an int >= 1, got {window!r}")
        self.interval = float(interval)
        self._samples: collections.deque[float] = collections.deque(maxlen=window)
        self._task: asyncio.Task[None] | None = None

    @property
    def max_lag(self) -> float:
        """The worst lag in seconds over the recent window (0.0 before the first sample)."""
        return max(self._samples, default=0.0)

    @property
    def samples(self) -> int:
        """How many samples the window holds."""
        return len(self._samples)

    async def start(self) -> EventLoopMonitor:
        """Start sampling (idempotent)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._sample(), name="scalekit.health.EventLoopMonitor"
            )
        return self

    async def aclose(self) -> None:
        """Stop sampling."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def __aenter__(self) -> EventLoopMonitor:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _sample(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(self.interval)
            self._samples.append(max(0.0, loop.time() - start - self.interval))


def event_loop_lag(
    *,
    warn_after: float | None = 0.25,
    fail_after: float | None = None,
    monitor: EventLoopMonitor | None = None,
) -> BuiltinCheck:
    """Report event-loop lag: the process's own responsiveness, the liveness signal.

    Without a monitor, the check measures one pass through the loop's ready queue at probe
    time; with an :class:`EventLoopMonitor` it reports the worst lag of the recent window.
    By default it never fails: a loop so blocked that it cannot answer already fails the
    probe by timing out, and restarting a process for a past hiccup does more harm than good.

    Args:
        warn_after: lag in seconds above which the check warns.
        fail_after: lag in seconds above which the check fails (None: never).
        monitor: a started :class:`EventLoopMonitor` to read from.

    Raises:
        ConfigurationError: thresholds are negative or ``warn_after > fail_after``.
    """
    _thresholds("warn_after", warn_after, "fail_after", fail_after)

    async def check() -> CheckResult:
        if monitor is not None:
            lag = monitor.max_lag
        else:
            loop = asyncio.get_running_loop()
            start = loop.time()
            await asyncio.sleep(0)
            lag = loop.time() - start
        ms = _ms(lag)
        return _graded(
            ms,
            "ms",
            None if warn_after is None else _ms(warn_after),
            None if fail_after is None else _ms(fail_after),
            "event-loop lag",
        )

    return BuiltinCheck(check, SYSTEM, "event-loop lag")
