"""The near cache: a bounded in-process L1 in front of Redis, kept coherent by invalidations.

redis-py's asyncio client has no client-side caching, so the invalidation channel is built here
on one dedicated connection: ``CLIENT ID``, then ``CLIENT TRACKING ON REDIRECT <own id> BCAST
PREFIX <namespace>:``, then ``SUBSCRIBE __redis__:invalidate``. Redis then reports every write to
a key of the namespace, by anyone, on that connection. Servers without tracking (or with it
disabled) fall back to pub/sub: scalekit publishes the keys it writes itself (writes by other
software are then not seen; the max local TTL bounds the staleness).

Coherence rules:

* while the link is down (and until it is back and re-subscribed) the L1 is flushed and
  bypassed: every read goes to Redis;
* a read records the invalidation sequence before asking Redis, and its reply fills the L1 only
  if no invalidation of that key (or flush) happened meanwhile, so an invalidation that
  overtakes the reply cannot leave the old value behind;
* every entry also expires after ``max_ttl`` seconds locally, whatever Redis says.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Literal

from scalekit._redact import redact_text
from scalekit._telemetry import get_logger
from scalekit.cache._sentinel import MISSING as _MISSING
from scalekit.errors import ConfigurationError

if TYPE_CHECKING:
    from scalekit.cache.core import Cache

__all__ = ["NearCache"]

_log = get_logger("scalekit.cache.near")
_INVALIDATE_CHANNEL = b"__redis__:invalidate"


class NearCache:
    """An in-process L1 for a :class:`~scalekit.cache.Cache` on Redis or Redis Cluster.

    Pass it as ``Cache(..., near=NearCache(...))``. Values are kept decoded: a near hit costs a
    dictionary lookup and returns the same object to every caller, so treat cached values as
    read-only. The invalidation link starts on first use; on a cluster there is one link per
    primary (found when the link starts), and the L1 is used only while all of them are up.

    Args:
        max_entries: the most entries kept in memory (least recently used evicted first).
        max_ttl: seconds an entry may be served locally at most.
        mode: ``"tracking"`` (``CLIENT TRACKING`` BCAST), ``"pubsub"`` (scalekit publishes its
            own writes) or ``"auto"`` (tracking, falling back to pub/sub when refused).
        ping_interval: seconds between liveness pings on an idle link; the link is declared
            down (and the L1 flushed) when a ping is not answered within that time again.

    Raises:
        ConfigurationError: a non-positive size or duration, or an unknown mode.
    """

    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        max_ttl: float = 30.0,
        mode: Literal["auto", "tracking", "pubsub"] = "auto",
        ping_interval: float = 1.0,
    ) -> None:
        if max_entries < 1 or max_ttl <= 0 or ping_interval <= 0:
            raise ConfigurationError("NearCache sizes and durations must be positive")
        if mode not in ("auto", "tracking", "pubsub"):
            raise ConfigurationError(f"NearCache(mode=...) is auto, tracking or pubsub: {mode!r}")
        self.max_entries = max_entries
        self.max_ttl = max_ttl
        self.mode = mode
        self.ping_interval = ping_interval
        self.active_mode: str | None = None
        """The mode in use once the link is up (``"tracking"`` or ``"pubsub"``)."""
        self.connected = False
        """Whether the invalidation link is up (the L1 is used only then)."""
        self.evictions = 0
        self.invalidations = 0
        """Keys invalidated by messages from the server."""
        self._data: OrderedDict[str, tuple[Any, float]] = OrderedDict()
        self._recent: OrderedDict[str, int] = OrderedDict()
        self._seq = 0
        self._floor = 0
        self._cache: Cache | None = None
        self._task: asyncio.Task[None] | None = None
        self._up = asyncio.Event()
        self._closed = False
        self._time: Any = None
        self._links = 1
        self._up_links: set[int] = set()
        self._down_since: dict[int, float] = {}  # link index -> monotonic time it went down

    def bind(self, cache: Cache) -> None:
        """Attach to ``cache`` (called by :class:`~scalekit.cache.Cache`; once only).

        Raises:
            ConfigurationError: already bound, or the backend is not a RedisBackend.
        """
        from scalekit.cache.redis import RedisBackend

        if self._cache is not None:
            raise ConfigurationError("a NearCache belongs to one Cache; create one per cache")
        if not isinstance(cache.backend, RedisBackend):
            raise ConfigurationError(
                "NearCache needs a RedisBackend (Redis or Redis Cluster); a MemoryBackend is "
                "already local"
            )
        self._cache = cache
        self._time = cache.clock.time

    # -- the L1 -------------------------------------------------------------------------------

    def lookup(self, key: str) -> Any:
        """The locally cached value of ``key``, or the missing sentinel."""
        if not self.connected:
            if self._task is None and not self._closed:
                self._start()
            return _MISSING
        item = self._data.get(key)
        if item is None:
            return _MISSING
        if self._time() >= item[1]:
            del self._data[key]
            return _MISSING
        self._data.move_to_end(key)
        return item[0]

    def begin(self, key: str) -> int | None:
        """Start a read of ``key`` from Redis; returns the token :meth:`fill` needs."""
        return self._seq if self.connected else None

    def fill(self, key: str, token: int | None, value: Any, fresh_until: float) -> None:
        """Keep ``value`` locally unless ``key`` was invalidated since :meth:`begin`."""
        if token is None or not self.connected or token < self._floor:
            return
        if self._recent.get(key, -1) > token:
            return
        deadline = min(fresh_until, self._time() + self.max_ttl)
        data = self._data
        data[key] = (value, deadline)
        data.move_to_end(key)
        if len(data) > self.max_entries:
            data.popitem(last=False)
            self.evictions += 1

    def invalidate(self, key: str) -> None:
        """Drop ``key`` locally and refuse fills of reads of it already in flight."""
        self._drop(key)

    async def announce(self, keys: list[str] | None) -> None:
        """In pub/sub mode, tell the other processes that ``keys`` changed (``None``: all).

        Called by the cache after its write reached Redis; a no-op in tracking mode, where the
        server reports writes itself. Failures are ignored: the max local TTL bounds the damage.
        """
        if self.active_mode != "pubsub" or self._cache is None:
            return
        payload = b"" if keys is None else "\n".join(keys).encode()
        client = self._cache.backend.client  # type: ignore[attr-defined]
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.publish(self._channel(), payload), 1.0)

    def _drop(self, key: str) -> None:
        self._seq += 1
        self._data.pop(key, None)
        recent = self._recent
        recent[key] = self._seq
        recent.move_to_end(key)
        if len(recent) > self.max_entries:
            _, seq = recent.popitem(last=False)
            self._floor = max(self._floor, seq)

    def flush(self) -> None:
        """Drop every local entry, and refuse fills of reads already in flight."""
        self._seq += 1
        self._floor = self._seq
        self._data.clear()
        self._recent.clear()

    def __len__(self) -> int:
        return len(self._data)

    # -- the invalidation link ----------------------------------------------------------------

    def _start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def wait_connected(self, *, max_wait: float = 5.0) -> bool:
        """Start the link if needed and wait until it is up; return whether it is.

        Args:
            max_wait: seconds to wait at most.
        """
        if self._task is None and not self._closed:
            self._start()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max_wait):
                await self._up.wait()
        return self.connected

    def _targets(self) -> list[tuple[Any, dict[str, Any]]]:
        """(connection class, kwargs) of every server whose writes must be seen."""
        assert self._cache is not None
        backend: Any = self._cache.backend
        client = backend.client
        if backend.is_cluster:
            return [(n.connection_class, dict(n.connection_kwargs)) for n in client.get_primaries()]
        pool = client.connection_pool
        return [(pool.connection_class, dict(pool.connection_kwargs))]

    async def _run(self) -> None:
        """Supervise one link per server (one per primary on a cluster); up only if all are.

        On a cluster, a link that stays down for ``2 * ping_interval`` (at least a second)
        makes the supervisor ask the cluster for its primaries again: after a failover whose
        old primary never comes back at its address (a replaced node, a new pod IP), the links
        move to the new primaries instead of retrying a dead address forever.
        """
        assert self._cache is not None
        backend: Any = self._cache.backend
        loop = asyncio.get_running_loop()
        patience = max(2 * self.ping_interval, 1.0)
        # a single server has no topology to re-read: its links are not polled
        poll = patience / 2 if backend.is_cluster else None
        while not self._closed:
            targets = self._targets()
            if not targets:  # a cluster client that has not learnt its nodes yet
                await self._initialize_cluster()
                targets = self._targets()
                if not targets:
                    await asyncio.sleep(patience / 2)
                    continue
            self._links = len(targets)
            self._up_links.clear()
            self._down_since = {i: loop.time() for i in range(len(targets))}
            tasks = [asyncio.ensure_future(self._link(i, *t)) for i, t in enumerate(targets)]
            try:
                while True:
                    done, _ = await asyncio.wait(tasks, timeout=poll)
                    if done:  # a link ended (it only ends by failing outright): start over
                        break
                    now = loop.time()
                    stale = any(now - since >= patience for since in self._down_since.values())
                    if stale and await self._topology_changed(targets):
                        _log.warning("near cache: the cluster's primaries changed; relinking")
                        break
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                self._up_links.clear()
                self.connected = False
                self._up.clear()
                self.flush()

    async def _initialize_cluster(self) -> bool:
        """On a cluster: ask it for its slot map again; whether that worked."""
        assert self._cache is not None
        backend: Any = self._cache.backend
        if not backend.is_cluster:
            return False
        client = backend.client
        try:
            if client.get_primaries():
                await client.nodes_manager.initialize()  # what redis-py does after a MOVED
            else:
                await client.initialize()  # its first connection: the client's own state too
        except Exception:
            return False  # no node answers (or the driver changed): keep what we have
        return True

    async def _topology_changed(self, targets: list[tuple[Any, dict[str, Any]]]) -> bool:
        """On a cluster: refresh the slot map; whether the primaries are others than targets."""
        if not await self._initialize_cluster():
            return False
        now = {(kw.get("host"), kw.get("port")) for _, kw in self._targets()}
        return now != {(kw.get("host"), kw.get("port")) for _, kw in targets}

    def _link_state(self, index: int, up: bool) -> None:
        self.flush()  # a link changed state: whatever happened meanwhile is unknown
        if up:
            self._up_links.add(index)
            self._down_since.pop(index, None)
        else:
            self._up_links.discard(index)
            self._down_since.setdefault(index, asyncio.get_running_loop().time())
        self.connected = len(self._up_links) == self._links
        if self.connected:
            self._up.set()
        else:
            self._up.clear()

    async def _link(self, index: int, connection_class: Any, kwargs: dict[str, Any]) -> None:
        delay = 0.05
        kwargs["socket_timeout"] = max(self.ping_interval * 2, 1.0)
        kwargs.setdefault("socket_connect_timeout", 2.0)
        kwargs["protocol"] = 2
        kwargs.pop("retry", None)
        while not self._closed:
            conn = None
            up = False
            try:
                conn = connection_class(**kwargs)
                await conn.connect()
                await self._subscribe(conn)
                self._link_state(index, True)
                up = True
                delay = 0.05
                await self._listen(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if up or delay == 0.05:
                    _log.warning(
                        "near cache link lost (%s: %s); serving from Redis until it is back",
                        type(exc).__name__,
                        redact_text(str(exc)),
                    )
            finally:
                self._link_state(index, False)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.disconnect()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _subscribe(self, conn: Any) -> None:
        assert self._cache is not None
        channel: str | bytes
        if self.mode in ("auto", "tracking"):
            await conn.send_command("CLIENT", "ID")
            client_id = await conn.read_response()
            prefix = self._cache.namespace + ":"
            await conn.send_command(
                "CLIENT", "TRACKING", "ON", "REDIRECT", client_id, "BCAST", "PREFIX", prefix
            )
            try:
                await conn.read_response()
                self.active_mode = "tracking"
                channel = _INVALIDATE_CHANNEL
            except Exception:
                if self.mode == "tracking":
                    raise
                self.active_mode = "pubsub"
                channel = self._channel()
        else:
            self.active_mode = "pubsub"
            channel = self._channel()
        await conn.send_command("SUBSCRIBE", channel)
        reply = await conn.read_response()
        if not reply or reply[0] != b"subscribe":
            raise ConnectionError(f"unexpected reply to SUBSCRIBE: {reply!r:.80}")

    def _channel(self) -> str:
        assert self._cache is not None
        return f"scalekit:near:{self._cache.namespace}"

    async def _listen(self, conn: Any) -> None:
        pinged = False
        while True:
            msg = await conn.read_response(timeout=self.ping_interval)
            if msg is None:
                if pinged:
                    raise ConnectionError("the Redis server did not answer a ping in time")
                await conn.send_command("PING")
                pinged = True
                continue
            pinged = False
            if msg[0] != b"message":
                continue  # pong
            payload = msg[2]
            if payload is None or payload == b"":
                self.flush()  # FLUSHALL/FLUSHDB, or a pub/sub flush
                continue
            keys = payload if isinstance(payload, list) else payload.split(b"\n")
            for key in keys:
                self.invalidations += 1
                self._drop(key.decode() if isinstance(key, bytes) else key)

    async def aclose(self) -> None:
        """Stop the invalidation link and drop the L1."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        self._task = None
        self.connected = False
        self.flush()

    def __repr__(self) -> str:
        state = self.active_mode if self.connected else "down"
        return f"NearCache(entries={len(self._data)}, max_entries={self.max_entries}, {state})"
