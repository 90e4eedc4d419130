"""The :class:`Cache`: serialization, freshness, stampede control and fail-open over a backend."""

from __future__ import annotations

import asyncio
import functools
import inspect
import math
import os
import random
import string
import struct
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar, runtime_checkable

from scalekit._telemetry import get_logger, meter, tracer
from scalekit.cache._sentinel import MISSING as _MISSING
from scalekit.cache._tags import (
    UNREAD,
    Unread,
    check_tag,
    counters,
    read_tag_section,
    tag_section,
)
from scalekit.cache.serializers import JsonSerializer, Serializer, Signer
from scalekit.clock import SYSTEM_CLOCK, Clock
from scalekit.errors import (
    CacheBackendError,
    ConfigurationError,
    InvalidCacheKeyError,
    SerializationError,
    ValueTooLargeError,
)

if TYPE_CHECKING:
    from scalekit.cache.backends import Backend
    from scalekit.cache.near import NearCache

__all__ = ["BackendBreaker", "Cache", "CacheStats"]

T = TypeVar("T")
P = ParamSpec("P")

_log = get_logger("scalekit.cache")

# Every stored value is a frame: header + serialized value (the whole frame signed when a Signer
# is configured, so nobody can extend a value's freshness either). Header fields: magic, flags,
# created (unix s), fresh until (unix s), load duration (s, for XFetch).
_HEADER = struct.Struct("<BBddf")
_HSIZE = _HEADER.size
_MAGIC = 0xC7
_F_LEASE = 1  # a fill placeholder, not a value (write-through race protection)
# A tag section follows the header: each tag's version when the value was loaded or set. A
# value whose tag has been purged since (its version moved) is no longer served.
_F_TAGS = 2

#: Tag -> purge count as read from the backend; ``None`` when it could not be read.
Versions = dict[str, int] | None


@dataclass(frozen=True, slots=True)
class CacheStats:
    """A snapshot of a cache's counters since it was created.

    Attributes:
        hits: reads answered with a fresh value (including near-cache hits).
        near_hits: the part of ``hits`` served from the in-process near cache.
        misses: reads that found nothing usable.
        stale_hits: reads served a stale value while it was refreshed in the background.
        stale_on_error: loads that failed and were answered with the last value instead.
        loads: loader calls.
        load_errors: loader calls that raised.
        coalesced: callers that joined a load (or lookup) already in flight for the same key.
        refreshes: background refreshes started (stale-while-revalidate and early refresh).
        backend_errors: backend calls that failed or timed out (served as misses / no-ops).
        breaker_rejections: backend calls skipped because the breaker was open.
        decode_errors: stored entries that could not be verified or decoded (served as misses).
        too_large: values not cached because they exceeded ``max_value_bytes``.
        evictions: entries evicted by a bounded backend or the near cache to make room.
    """

    hits: int
    near_hits: int
    misses: int
    stale_hits: int
    stale_on_error: int
    loads: int
    load_errors: int
    coalesced: int
    refreshes: int
    backend_errors: int
    breaker_rejections: int
    decode_errors: int
    too_large: int
    evictions: int

    @property
    def hit_ratio(self) -> float:
        """Hits (fresh or stale) over all reads; 0.0 before the first read."""
        served = self.hits + self.stale_hits
        total = served + self.misses
        return served / total if total else 0.0


@runtime_checkable
class BackendBreaker(Protocol):
    """The simple circuit-breaker protocol a :class:`Cache` accepts as ``breaker=``.

    A breaker from :mod:`scalekit.resilience` fits, as does any object with these three
    methods. An object that is instead an async context manager (``async with breaker: ...``,
    raising while open) is accepted too.
    """

    def allow(self) -> bool:
        """Whether a backend call may be attempted now."""
        ...

    def record_success(self) -> None:
        """A backend call succeeded."""
        ...

    def record_failure(self, exc: BaseException) -> None:
        """A backend call failed with ``exc``."""
        ...


class _LeaderGone(Exception):
    """The caller that was loading for us was cancelled: try again ourselves."""


class _Flight:
    """A lookup or load in flight; waiters share its result through ``future``."""

    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: asyncio.Future[Any] | None = None


class _Entry:
    __slots__ = ("created", "delta", "flags", "fresh_until", "tags", "value")

    def __init__(
        self,
        value: Any,
        flags: int,
        created: float,
        fresh_until: float,
        delta: float,
        tags: tuple[tuple[str, int], ...] = (),
    ) -> None:
        self.value = value
        self.flags = flags
        self.created = created
        self.fresh_until = fresh_until
        self.delta = delta
        self.tags = tags


class Cache:
    """A namespaced cache over a :class:`~scalekit.cache.Backend`, safe under load and failure.

    Reads degrade to misses and writes to no-ops when the backend fails or is slower than its
    timeout (``strict=True`` raises :class:`~scalekit.errors.CacheBackendError` instead); every
    such failure is logged (rate-limited) and counted in :meth:`stats`.

    Freshness: a value is *fresh* for ``ttl`` seconds (shortened by up to ``ttl_jitter`` at
    random so keys written together do not expire together). After that it stays stored for
    ``max(stale_ttl, stale_if_error)`` more seconds: within ``stale_ttl`` :meth:`get_or_load`
    serves it and refreshes it in the background; within ``stale_if_error`` it is served when
    the loader fails. :meth:`get` returns fresh values only.

    Args:
        backend: where bytes are stored (:class:`~scalekit.cache.MemoryBackend`,
            :class:`~scalekit.cache.RedisBackend`).
        namespace: prefix of every key (``"<namespace>:<key>"``); :meth:`clear` deletes it.
        default_ttl: seconds a value stays fresh when ``ttl`` is not given; ``None``: forever.
        serializer: how values become bytes (JSON by default; never pickle).
        signer: HMAC-sign every stored frame and refuse frames that do not verify.
        ttl_jitter: the fraction (0 to 1) by which each TTL is randomly shortened.
        stale_ttl: seconds after expiry during which a stale value is served while refreshing.
        stale_if_error: seconds after expiry during which a stale value answers a failed load.
        negative_ttl: seconds to cache a loader's ``None`` ("not found"); ``None``: do not.
        early_refresh: XFetch's beta; > 0 refreshes hot keys probabilistically before expiry
            (1.0 is the paper's optimum), 0 disables it.
        lease: take a short Redis lease on a miss so one process across the fleet loads; the
            others wait for its value (or are served the stale one).
        lease_ttl: seconds the lease is held at most (a crashed loader's lease expires).
        max_value_bytes: refuse to store bigger frames
            (:class:`~scalekit.errors.ValueTooLargeError`).
        strict: raise backend failures instead of failing open.
        breaker: a circuit breaker guarding backend calls (:class:`BackendBreaker` or an async
            context manager).
        near: an in-process near cache kept coherent through Redis invalidations.
        clock: the time source.

    Raises:
        ConfigurationError: a negative duration, or a jitter outside [0, 1).
    """

    def __init__(
        self,
        backend: Backend,
        *,
        namespace: str,
        default_ttl: float | None = 300.0,
        serializer: Serializer | None = None,
        signer: Signer | None = None,
        ttl_jitter: float = 0.1,
        stale_ttl: float = 0.0,
        stale_if_error: float = 0.0,
        negative_ttl: float | None = None,
        early_refresh: float = 0.0,
        lease: bool = False,
        lease_ttl: float = 10.0,
        max_value_bytes: int = 1024 * 1024,
        strict: bool = False,
        breaker: BackendBreaker | Any | None = None,
        near: NearCache | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not isinstance(namespace, str) or not namespace:
            raise ConfigurationError("Cache(namespace=...) must be a non-empty str")
        for name, val in (
            ("default_ttl", default_ttl),
            ("stale_ttl", stale_ttl),
            ("stale_if_error", stale_if_error),
            ("negative_ttl", negative_ttl),
            ("early_refresh", early_refresh),
        ):
            if val is not None and (val < 0 or math.isnan(val)):
                raise ConfigurationError(f"Cache({name}=...) must be >= 0, got {val!r}")
        if not 0 <= ttl_jitter < 1:
            raise ConfigurationError("Cache(ttl_jitter=...) must be in [0, 1)")
        if lease_ttl <= 0 or max_value_bytes <= 0:
            raise ConfigurationError("Cache lease_ttl and max_value_bytes must be positive")
        self.backend = backend
        self.namespace = namespace
        self._prefix = namespace + ":"
        self.default_ttl = default_ttl
        self.serializer: Serializer = serializer if serializer is not None else JsonSerializer()
        self.signer = signer
        self.ttl_jitter = ttl_jitter
        self.stale_ttl = stale_ttl
        self.stale_if_error = stale_if_error
        self.negative_ttl = negative_ttl
        self.early_refresh = early_refresh
        self.lease = lease
        self.lease_ttl = lease_ttl
        self.max_value_bytes = max_value_bytes
        self.strict = strict
        self.clock = clock
        self._keep = max(stale_ttl, stale_if_error)
        self._breaker_simple: Any = None
        self._breaker_cm: Any = None
        if breaker is not None:
            if hasattr(breaker, "__aenter__") and hasattr(breaker, "__aexit__"):
                self._breaker_cm = breaker
            elif isinstance(breaker, BackendBreaker):
                self._breaker_simple = breaker
            else:
                raise ConfigurationError(
                    "Cache(breaker=...) takes an async context manager or an object with "
                    "allow(), record_success() and record_failure(exc)"
                )
        self._guarded = breaker is not None
        self.near = near
        if near is not None:
            near.bind(self)
        self._inflight: dict[str, _Flight] = {}
        self._refreshing: dict[str, asyncio.Task[Any]] = {}
        self._last_log = -math.inf
        self._suppressed = 0
        # counters (plain ints: the hot path must not pay for telemetry)
        self._hits = self._near_hits = self._misses = self._stale_hits = 0
        self._stale_on_error = self._loads = self._load_errors = self._coalesced = 0
        self._refreshes = self._backend_errors = self._rejections = 0
        self._decode_errors = self._too_large = 0
        self._instruments(namespace)

    # -- telemetry ----------------------------------------------------------------------------

    def _instruments(self, namespace: str) -> None:
        attrs = {"scalekit.cache.namespace": namespace}
        ref = weakref.ref(self)
        m = meter()

        def observe(field: str) -> Callable[[Any], list[Any]]:
            from opentelemetry.metrics import Observation

            def callback(_options: Any) -> list[Any]:
                cache = ref()
                if cache is None:
                    return []
                return [Observation(getattr(cache.stats(), field), attrs)]

            return callback

        for field, desc in (
            ("hits", "reads answered with a fresh value"),
            ("misses", "reads that found nothing usable"),
            ("stale_hits", "stale values served while refreshing"),
            ("stale_on_error", "stale values served because the loader failed"),
            ("loads", "loader calls"),
            ("load_errors", "loader calls that raised"),
            ("backend_errors", "backend calls that failed or timed out"),
            ("evictions", "entries evicted to make room"),
        ):
            m.create_observable_counter(
                f"scalekit.cache.{field}", callbacks=[observe(field)], description=desc
            )
        self._load_hist = m.create_histogram(
            "scalekit.cache.load.duration", unit="s", description="loader call duration"
        )
        self._attrs = attrs
        self._tracer = tracer()

    def stats(self) -> CacheStats:
        """A snapshot of the counters (see :class:`CacheStats`)."""
        evictions = int(getattr(self.backend, "evictions", 0))
        if self.near is not None:
            evictions += self.near.evictions
        return CacheStats(
            hits=self._hits,
            near_hits=self._near_hits,
            misses=self._misses,
            stale_hits=self._stale_hits,
            stale_on_error=self._stale_on_error,
            loads=self._loads,
            load_errors=self._load_errors,
            coalesced=self._coalesced,
            refreshes=self._refreshes,
            backend_errors=self._backend_errors,
            breaker_rejections=self._rejections,
            decode_errors=self._decode_errors,
            too_large=self._too_large,
            evictions=evictions,
        )

    # -- keys and frames ----------------------------------------------------------------------

    def key(self, key: str) -> str:
        """The full backend key for ``key`` (``"<namespace>:<key>"``).

        Raises:
            InvalidCacheKeyError: ``key`` is not a non-empty str.
        """
        if type(key) is not str or not key:
            raise InvalidCacheKeyError(
                f"cache keys are non-empty str, got {type(key).__name__} {key!r:.60}; "
                'build the key explicitly, e.g. f"user:{user_id}"'
            )
        return self._prefix + key

    def _ttl(self, ttl: float | None) -> float | None:
        if ttl is None:
            return None
        if ttl < 0 or math.isnan(ttl):
            raise ConfigurationError(f"ttl must be >= 0 seconds, got {ttl!r}")
        if self.ttl_jitter:
            ttl *= 1.0 - self.ttl_jitter * random.random()
        return ttl

    def _pack(
        self,
        value: Any,
        ttl: float | None,
        delta: float = 0.0,
        flags: int = 0,
        tagged: bytes = b"",
    ) -> bytes:
        now = self.clock.time()
        fresh_until = math.inf if ttl is None else now + ttl
        payload = b"" if flags & _F_LEASE else self.serializer.dumps(value)
        if tagged:  # the tag section (tag_section()), encoded once per write however many rows
            flags |= _F_TAGS
            payload = tagged + payload
        frame = _HEADER.pack(_MAGIC, flags, now, fresh_until, delta) + payload
        if self.signer is not None:
            frame = self.signer.sign(frame)
        if len(frame) > self.max_value_bytes:
            raise ValueTooLargeError(
                f"the value is {len(frame)} bytes encoded, over max_value_bytes="
                f"{self.max_value_bytes}; cache something smaller or raise the limit"
            )
        return frame

    def _unpack(self, data: bytes) -> _Entry | None:
        try:
            if self.signer is not None:
                data = self.signer.verify(data)
            if len(data) < _HSIZE or data[0] != _MAGIC:
                raise SerializationError("stored bytes are not a scalekit cache entry")
            _, flags, created, fresh_until, delta = _HEADER.unpack_from(data)
            tags: tuple[tuple[str, int], ...] = ()
            start = _HSIZE
            if flags & _F_TAGS:
                try:
                    tags, start = read_tag_section(data, start)
                except (struct.error, UnicodeDecodeError) as exc:
                    raise SerializationError(f"malformed tag section ({exc})") from None
            value = None if flags & _F_LEASE else self.serializer.loads(data[start:])
        except SerializationError as exc:
            self._decode_errors += 1
            if self.strict:
                raise
            self._warn("decode", exc)
            return None
        return _Entry(value, flags, created, fresh_until, delta, tags)

    @staticmethod
    def _physical(ttl: float | None, keep: float) -> float | None:
        return None if ttl is None else ttl + keep

    # -- failure handling ---------------------------------------------------------------------

    def _warn(self, op: str, exc: BaseException) -> None:
        now = self.clock.monotonic()
        if now - self._last_log < 10.0:
            self._suppressed += 1
            return
        more = f" ({self._suppressed} similar suppressed)" if self._suppressed else ""
        self._suppressed = 0
        self._last_log = now
        _log.warning(
            "cache %r: %s failed (%s: %s); failing open%s",
            self.namespace,
            op,
            type(exc).__name__,
            exc,
            more,
        )

    def _failed(self, op: str, exc: Exception) -> None:
        self._backend_errors += 1
        if self._breaker_simple is not None:
            self._breaker_simple.record_failure(exc)
        if self.strict:
            raise CacheBackendError(
                f"cache {self.namespace!r}: backend {op} failed: {type(exc).__name__}: {exc}. "
                "Check the backend; strict=False would serve a miss instead."
            ) from exc
        self._warn(op, exc)

    async def _call(self, op: str, coro: Awaitable[T], default: T) -> T:
        """Await a backend call; on failure count, log and return ``default`` (or raise)."""
        if self._guarded:
            return await self._call_guarded(op, coro, default)
        try:
            return await coro
        except Exception as exc:
            self._failed(op, exc)
            return default

    async def _call_guarded(self, op: str, coro: Awaitable[T], default: T) -> T:
        simple = self._breaker_simple
        if simple is not None:
            if not simple.allow():
                _close(coro)
                return self._rejected(op, default)
            try:
                result = await coro
            except Exception as exc:
                self._failed(op, exc)
                return default
            simple.record_success()
            return result
        cm = self._breaker_cm
        try:
            await cm.__aenter__()
        except Exception:
            _close(coro)
            return self._rejected(op, default)
        try:
            result = await coro
        except Exception as exc:
            await cm.__aexit__(type(exc), exc, exc.__traceback__)
            self._failed(op, exc)
            return default
        except BaseException as exc:
            await cm.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        await cm.__aexit__(None, None, None)
        return result

    def _rejected(self, op: str, default: T) -> T:
        self._rejections += 1
        if self.strict:
            raise CacheBackendError(
                f"cache {self.namespace!r}: backend {op} skipped, its circuit breaker is open"
            )
        return default

    # -- plain operations ---------------------------------------------------------------------

    async def get(self, key: str, default: Any = None) -> Any:
        """The fresh value stored under ``key``, or ``default``.

        Stale, undecodable and unverifiable entries count as misses, as does a backend failure
        (unless ``strict``).

        Raises:
            InvalidCacheKeyError: ``key`` is not a non-empty str.
            CacheBackendError: strict mode only, the backend failed.
        """
        full = self.key(key)
        near = self.near
        if near is not None:
            value = near.lookup(full)
            if value is not _MISSING:
                self._hits += 1
                self._near_hits += 1
                return value
            token = near.begin(full)
        if self._guarded:
            data = await self._call_guarded("get", self.backend.get(full), None)
        else:  # the hot path: one coroutine frame fewer than going through _call
            try:
                data = await self.backend.get(full)
            except Exception as exc:
                self._failed("get", exc)
                data = None
        if data is None:
            self._misses += 1
            return default
        entry = self._unpack(data)
        if (
            entry is None
            or entry.flags & _F_LEASE
            or self.clock.time() >= entry.fresh_until
            or (entry.tags and not await self._tags_current([entry]))
        ):
            self._misses += 1
            return default
        self._hits += 1
        if near is not None:
            near.fill(full, token, entry.value, entry.fresh_until)
        return entry.value

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The fresh values of those ``keys`` that have one (one pipelined read).

        Raises:
            InvalidCacheKeyError: a key is not a non-empty str.
        """
        keys = list(keys)
        fulls = [self.key(k) for k in keys]
        found: dict[str, Any] = {}
        near = self.near
        tokens: list[int | None] = []
        if near is not None:  # serve what the near cache has; ask Redis for the rest
            rest_keys: list[str] = []
            rest_fulls: list[str] = []
            for key, full in zip(keys, fulls, strict=True):
                value = near.lookup(full)
                if value is _MISSING:
                    rest_keys.append(key)
                    rest_fulls.append(full)
                    tokens.append(near.begin(full))
                else:
                    self._hits += 1
                    self._near_hits += 1
                    found[key] = value
            keys, fulls = rest_keys, rest_fulls
        if not fulls:
            return found
        nothing: list[bytes | None] = [None] * len(fulls)
        datas = await self._call("get_many", self.backend.get_many(fulls), nothing)
        now = self.clock.time()
        entries = [self._unpack(data) if data is not None else None for data in datas]
        tagged = [e for e in entries if e is not None and e.tags]
        purged = frozenset() if not tagged else await self._purged(tagged)
        for i, (key, entry) in enumerate(zip(keys, entries, strict=True)):
            if (
                entry is None
                or entry.flags & _F_LEASE
                or now >= entry.fresh_until
                or (entry.tags and (purged is None or any(t in purged for t in entry.tags)))
            ):
                self._misses += 1
            else:
                self._hits += 1
                found[key] = entry.value
                if near is not None:
                    near.fill(fulls[i], tokens[i], entry.value, entry.fresh_until)
        return found

    async def set(
        self, key: str, value: Any, *, ttl: float | None = _MISSING, tags: Sequence[str] = ()
    ) -> bool:
        """Store ``value`` under ``key``; return whether the backend stored it.

        Args:
            key: the key (within the namespace).
            value: anything the serializer encodes.
            ttl: seconds the value is fresh; defaults to ``default_ttl``; ``None``: forever.
            tags: tags to invalidate it by later (:meth:`invalidate_tags`).

        Raises:
            InvalidCacheKeyError: ``key`` is not a non-empty str.
            SerializationError: the serializer cannot encode ``value``.
            ValueTooLargeError: the encoded value exceeds ``max_value_bytes``.
            CacheBackendError: strict mode only, the backend failed.
        """
        full = self.key(key)
        eff = self._ttl(self.default_ttl if ttl is _MISSING else ttl)
        tagged = b""
        if tags:
            versions = await self._tag_versions(tags)
            if versions is None:  # unversioned, a purge could miss it: do not store it
                return False
            tagged = tag_section(versions)
        frame = self._pack(value, eff, tagged=tagged)
        if self.near is not None:
            self.near.invalidate(full)
        physical = self._physical(eff, self._keep)
        ok = await self._call("set", self._set(full, frame, physical), False)
        if ok and tags:
            ok = await self._tag(tags, [full], physical)
        if self.near is not None:
            await self.near.announce([full])
        return ok

    async def _set(self, full: str, frame: bytes, ttl: float | None) -> bool:
        await self.backend.set(full, frame, ttl)
        return True

    async def _tag(self, tags: Sequence[str], fulls: Sequence[str], ttl: float | None) -> bool:
        ok = True
        for tag in tags:
            ok = await self._call("tag", self._tag_one(self._tag_key(tag), fulls, ttl), False)
        return ok

    async def _tag_one(self, tag_key: str, fulls: Sequence[str], ttl: float | None) -> bool:
        await self.backend.tag(tag_key, fulls, ttl)
        return True

    def _tag_key(self, tag: str) -> str:
        check_tag(tag)
        return f"{self._prefix}#tag:{tag}"

    def _version_key(self, tag: str) -> str:
        return f"{self._prefix}#tagv:{check_tag(tag)}"

    def _read_versions(self, tags: Sequence[str], datas: Sequence[bytes | None]) -> Versions:
        """Tag -> purge count from what the backend returned for the tags' counters."""
        found = counters(datas)
        return None if found is None else dict(zip(tags, found, strict=True))

    async def _tag_versions(self, tags: Sequence[str]) -> Versions:
        """Each tag's purge count (0 if never purged); ``None`` when they cannot be read."""
        fulls = [self._version_key(tag) for tag in tags]
        datas = await self._call("tag versions", self.backend.get_many(fulls), None)
        return None if datas is None else self._read_versions(tags, datas)

    async def _current(self, entry: _Entry, versions: Versions) -> bool:
        """Whether ``entry``'s tags are unpurged, by ``versions`` read with it when they cover
        its tags (the usual case: stored with the tags it is read with), else by a new read."""
        if versions and all(tag in versions for tag, _ in entry.tags):
            return all(versions[tag] == version for tag, version in entry.tags)
        return await self._tags_current([entry])

    async def _purged(self, entries: Sequence[_Entry]) -> frozenset[tuple[str, int]] | None:
        """The ``(tag, version)`` pairs of ``entries`` that a purge has superseded since.

        ``None`` when the versions cannot be read: then no tagged entry can be trusted.
        """
        pairs = {pair for entry in entries for pair in entry.tags}
        current = await self._tag_versions(sorted({tag for tag, _ in pairs}))
        if current is None:
            return None
        return frozenset((tag, version) for tag, version in pairs if current[tag] != version)

    async def _tags_current(self, entries: Sequence[_Entry]) -> bool:
        """Whether no tag of ``entries`` has been purged since they were written."""
        purged = await self._purged(entries)
        return purged is not None and not purged

    async def set_many(
        self, items: Mapping[str, Any], *, ttl: float | None = _MISSING, tags: Sequence[str] = ()
    ) -> bool:
        """Store several values in one pipelined write; return whether the backend stored them.

        Raises:
            InvalidCacheKeyError: a key is not a non-empty str.
            SerializationError: a value cannot be encoded (nothing is stored then).
            ValueTooLargeError: a value exceeds ``max_value_bytes`` (nothing is stored then).
        """
        base = self.default_ttl if ttl is _MISSING else ttl
        tagged = b""
        if tags and items:
            versions = await self._tag_versions(tags)
            if versions is None:  # unversioned, a purge could miss them: do not store them
                return False
            tagged = tag_section(versions)
        rows: list[tuple[str, bytes, float | None]] = []
        for key, value in items.items():
            full = self.key(key)
            eff = self._ttl(base)
            frame = self._pack(value, eff, tagged=tagged)
            rows.append((full, frame, self._physical(eff, self._keep)))
        if not rows:
            return True
        if self.near is not None:
            for full, _, _ in rows:
                self.near.invalidate(full)
        ok = await self._call("set_many", self._set_many(rows), False)
        if ok and tags:
            longest = None if any(r[2] is None for r in rows) else max(r[2] or 0 for r in rows)
            ok = await self._tag(tags, [r[0] for r in rows], longest)
        if self.near is not None:
            await self.near.announce([r[0] for r in rows])
        return ok

    async def _set_many(self, rows: Sequence[tuple[str, bytes, float | None]]) -> bool:
        await self.backend.set_many(rows)
        return True

    async def delete(self, key: str) -> bool:
        """Delete ``key``; return whether it existed (``False`` too when the backend failed).

        Raises:
            InvalidCacheKeyError: ``key`` is not a non-empty str.
            CacheBackendError: strict mode only, the backend failed.
        """
        full = self.key(key)
        if self.near is None:
            return await self._call("delete", self.backend.delete(full), False)
        self.near.invalidate(full)
        existed = await self._call("delete", self.backend.delete(full), False)
        await self.near.announce([full])
        return existed

    async def delete_many(self, keys: Iterable[str]) -> int:
        """Delete the keys (one command per hash slot); return how many existed."""
        fulls = [self.key(k) for k in keys]
        if self.near is not None:
            for full in fulls:
                self.near.invalidate(full)
        count = await self._call("delete_many", self.backend.delete_many(fulls), 0)
        if self.near is not None:
            await self.near.announce(fulls)
        return count

    async def clear(self) -> int:
        """Delete every key of this namespace (SCAN based, never KEYS); return how many."""
        if self.near is not None:
            self.near.flush()
        count = await self._call("clear", self.backend.clear(self._prefix), 0)
        if self.near is not None:
            await self.near.announce(None)
        return count

    async def invalidate_tags(self, tags: Iterable[str]) -> int:
        """Invalidate every value stored with any of ``tags``; return how many keys were deleted.

        Each tag's version moves first, so a value tagged before the purge is never served
        again, even one whose write raced the purge (a load that started before it and stored
        after it); then the tag's member keys are deleted to free their memory.
        """
        total = 0
        if self.near is not None:
            # members are not known locally; tag purges are rare, flushing is safe
            self.near.flush()
        for tag in tags:
            await self._call("invalidate_tags", self.backend.incr(self._version_key(tag)), 0)
            total += await self._call(
                "invalidate_tags", self.backend.invalidate_tag(self._tag_key(tag)), 0
            )
        if self.near is not None:
            await self.near.announce(None)
        return total

    # -- read-through -------------------------------------------------------------------------

    async def get_or_load(
        self,
        key: str,
        loader: Callable[[], Awaitable[T]],
        *,
        ttl: float | None = _MISSING,
        tags: Sequence[str] = (),
    ) -> T:
        """The cached value of ``key``, or the loader's, cached on the way back.

        However many callers miss the same key at once, the loader runs once in this process
        (and once across processes with ``lease=True``); the others wait for its value. A
        value past its TTL but within ``stale_ttl`` is returned at once and refreshed in the
        background; a failing loader is answered with the last value within
        ``stale_if_error``. A ``None`` result is cached only with ``negative_ttl``.

        Args:
            key: the key (within the namespace).
            loader: an async callable producing the value on a miss.
            ttl: seconds the loaded value is fresh; defaults to ``default_ttl``.
            tags: tags stored with a loaded value.

        Raises:
            InvalidCacheKeyError: ``key`` is not a non-empty str.
            Exception: whatever the loader raised, when no stale value may answer instead.
        """
        full = self.key(key)
        near = self.near
        if near is not None:
            value = near.lookup(full)
            if value is not _MISSING:
                self._hits += 1
                self._near_hits += 1
                return value  # type: ignore[no-any-return]
        inflight = self._inflight
        while True:
            flight = inflight.get(full)
            if flight is None:
                break
            self._coalesced += 1
            if flight.future is None:  # the first waiter creates the future (hits rarely wait)
                flight.future = asyncio.get_running_loop().create_future()
            try:
                return await asyncio.shield(flight.future)
            except _LeaderGone:
                continue
            except BaseException as exc:
                # one exception object is raised in every waiter: do not let tracebacks pile up
                raise exc.with_traceback(None) from exc.__cause__
        flight = inflight[full] = _Flight()
        try:
            result = await self._resolve(full, loader, ttl, tags)
        except asyncio.CancelledError:
            if flight.future is not None:
                flight.future.set_exception(_LeaderGone())
                flight.future.exception()
            raise
        except BaseException as exc:
            if flight.future is not None:
                flight.future.set_exception(exc)
                flight.future.exception()  # retrieved: the waiters re-raise it
            raise
        else:
            if flight.future is not None:
                flight.future.set_result(result)
            return result
        finally:
            del inflight[full]

    async def _resolve(
        self, full: str, loader: Callable[[], Awaitable[T]], ttl: Any, tags: Sequence[str]
    ) -> T:
        near = self.near
        token = near.begin(full) if near is not None else None
        versions: Versions = {}
        if tags:
            # the value and its tags' counters in one read (one MGET; one pipelined round trip
            # on a cluster): they validate a hit, and a miss's load stores them
            fulls = [full, *(self._version_key(tag) for tag in tags)]
            datas = await self._call("get", self.backend.get_many(fulls), None)
            data = None if datas is None else datas[0]
            versions = None if datas is None else self._read_versions(tags, datas[1:])
        elif self._guarded:
            data = await self._call_guarded("get", self.backend.get(full), None)
        else:
            try:
                data = await self.backend.get(full)
            except Exception as exc:
                self._failed("get", exc)
                data = None
        stale: _Entry | None = None
        if data is not None:
            entry = self._unpack(data)
            if entry is not None and entry.tags and not await self._current(entry, versions):
                entry = None  # its tag was purged: neither fresh nor stale, gone
            if entry is not None and not entry.flags & _F_LEASE:
                now = self.clock.time()
                if now < entry.fresh_until:
                    self._hits += 1
                    beta = self.early_refresh
                    if (
                        beta
                        and entry.delta > 0
                        and now - entry.delta * beta * math.log(random.random() or 1e-300)
                        >= entry.fresh_until
                    ):
                        self._refresh(full, loader, ttl, tags, entry)
                    if near is not None:
                        near.fill(full, token, entry.value, entry.fresh_until)
                    return entry.value  # type: ignore[no-any-return]
                if now - entry.fresh_until < self.stale_ttl:
                    self._stale_hits += 1
                    self._refresh(full, loader, ttl, tags, entry)
                    return entry.value  # type: ignore[no-any-return]
                stale = entry
        self._misses += 1
        return await self._load(full, loader, ttl, tags, stale, versions=versions)

    def _refresh(
        self,
        full: str,
        loader: Callable[[], Awaitable[Any]],
        ttl: Any,
        tags: Sequence[str],
        stale: _Entry,
    ) -> None:
        if full in self._refreshing:
            return
        self._refreshes += 1
        task = asyncio.get_running_loop().create_task(
            self._background(full, loader, ttl, tags, stale)
        )
        self._refreshing[full] = task

    async def _background(
        self,
        full: str,
        loader: Callable[[], Awaitable[Any]],
        ttl: Any,
        tags: Sequence[str],
        stale: _Entry,
    ) -> None:
        try:
            await self._load(full, loader, ttl, tags, stale, background=True)
        except Exception as exc:
            self._warn("background refresh", exc)
        finally:
            self._refreshing.pop(full, None)

    async def _load(
        self,
        full: str,
        loader: Callable[[], Awaitable[T]],
        ttl: Any,
        tags: Sequence[str],
        stale: _Entry | None,
        *,
        background: bool = False,
        versions: Versions | Unread = UNREAD,
    ) -> T:
        lock_key = lock_token = None
        if self.lease:
            lock_key = full + ":#lease"
            lock_token = os.urandom(16)
            acquired = await self._call(
                "lease", self.backend.add(lock_key, lock_token, self.lease_ttl), True
            )
            if not acquired:
                lock_key = None
                if stale is not None:
                    self._stale_hits += 1
                    return stale.value  # type: ignore[no-any-return]
                if background:
                    return None  # type: ignore[return-value]
                found = await self._await_peer(full)
                if found is not None:
                    return found.value  # type: ignore[no-any-return]
        try:
            # the tags' versions before the load: a purge during it outdates what it stores
            if isinstance(versions, Unread):
                versions = await self._tag_versions(tags) if tags else {}
            value, delta, fresh = await self._run_loader(loader, stale)
            if fresh and (value is not None or self.negative_ttl is not None):
                base = self.default_ttl if ttl is _MISSING else ttl
                if value is None:
                    base = self.negative_ttl
                if versions is not None:  # unknown versions: serve the value, do not store it
                    await self._store(full, value, base, tags, delta, versions)
            return value
        finally:
            if lock_key is not None and lock_token is not None:
                await self._call(
                    "lease release", self.backend.compare_and_delete(lock_key, lock_token), False
                )

    async def _run_loader(
        self, loader: Callable[[], Awaitable[T]], stale: _Entry | None
    ) -> tuple[T, float, bool]:
        """Run the loader: ``(value, seconds it took, whether the value is new)``."""
        self._loads += 1
        start = self.clock.monotonic()
        try:
            with self._tracer.start_as_current_span("scalekit.cache.load", attributes=self._attrs):
                value = await loader()
        except Exception as exc:
            self._load_errors += 1
            if stale is not None and self.clock.time() - stale.fresh_until <= self.stale_if_error:
                self._stale_on_error += 1
                _log.warning(
                    "cache %r: loader failed (%s: %s); serving the value from %.1fs ago",
                    self.namespace,
                    type(exc).__name__,
                    exc,
                    self.clock.time() - stale.created,
                )
                return stale.value, 0.0, False
            raise
        finally:
            delta = self.clock.monotonic() - start
            self._load_hist.record(delta, self._attrs)
        return value, delta, True

    async def _store(
        self,
        full: str,
        value: Any,
        ttl: float | None,
        tags: Sequence[str],
        delta: float,
        versions: Mapping[str, int],
    ) -> None:
        eff = self._ttl(ttl)
        try:
            frame = self._pack(value, eff, delta, tagged=tag_section(versions) if versions else b"")
        except (SerializationError, ValueTooLargeError) as exc:
            if isinstance(exc, ValueTooLargeError):
                self._too_large += 1
            self._warn("store", exc)
            return
        physical = self._physical(eff, self._keep)
        if self.near is not None:
            self.near.invalidate(full)
        if await self._call("set", self._set(full, frame, physical), False) and tags:
            await self._tag(tags, [full], physical)
        if self.near is not None:
            await self.near.announce([full])

    async def _await_peer(self, full: str) -> _Entry | None:
        """Another process holds the lease: poll for its value until the lease could expire."""
        deadline = self.clock.monotonic() + self.lease_ttl
        delay = 0.005
        while self.clock.monotonic() < deadline:
            await self.clock.sleep(delay)
            delay = min(delay * 1.5, 0.1)
            data = await self._call("get", self.backend.get(full), None)
            if data is not None:
                entry = self._unpack(data)
                if (
                    entry is not None
                    and not entry.flags & _F_LEASE
                    and (not entry.tags or await self._tags_current([entry]))
                ):
                    return entry
        return None

    # -- decorator ----------------------------------------------------------------------------

    def cached(
        self,
        *,
        ttl: float | None = _MISSING,
        key: str | Callable[..., str] | None = None,
        tags: Sequence[str] = (),
    ) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
        """Decorate an async function so its results are cached through :meth:`get_or_load`.

        The key is a template over the function's parameters (``key="user:{user_id}"``), a
        function taking the same arguments and returning the key, or by default the function's
        qualified name and its arguments' ``repr``::

            @cache.cached(ttl=60, key="user:{user_id}")
            async def load_user(user_id: int) -> dict[str, Any]: ...

        Args:
            ttl: seconds results stay fresh; defaults to the cache's ``default_ttl``.
            key: the key template or key function.
            tags: tags stored with every result.

        Raises:
            ConfigurationError: the template names a parameter the function does not have.
        """

        def decorate(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
            sig = inspect.signature(fn)
            build: Callable[..., str]
            if callable(key):
                build = key
            else:
                if key is None:
                    prefix = f"{fn.__module__}.{fn.__qualname__}"

                    def build(*args: Any, **kwargs: Any) -> str:
                        bound = sig.bind(*args, **kwargs)
                        bound.apply_defaults()
                        inner = ",".join(f"{k}={v!r}" for k, v in bound.arguments.items())
                        return f"{prefix}({inner})"
                else:
                    template = key
                    fields = {
                        f.split(".")[0].split("[")[0]
                        for _, f, _, _ in string.Formatter().parse(template)
                        if f is not None
                    }
                    unknown = fields - set(sig.parameters)
                    if unknown or "" in fields:
                        raise ConfigurationError(
                            f"key template {template!r} names {sorted(unknown) or ['{}']}, "
                            f"which {fn.__qualname__} has no parameter for; use "
                            f"{sorted(sig.parameters)}"
                        )

                    def build(*args: Any, **kwargs: Any) -> str:
                        bound = sig.bind(*args, **kwargs)
                        bound.apply_defaults()
                        return template.format_map(bound.arguments)

            @functools.wraps(fn)
            async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
                return await self.get_or_load(
                    build(*args, **kwargs), lambda: fn(*args, **kwargs), ttl=ttl, tags=tags
                )

            wrapper.cache_key = build  # type: ignore[attr-defined]
            return wrapper

        return decorate

    # -- lifecycle ----------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop background refreshes and the near cache's link (the backend stays open)."""
        tasks = list(self._refreshing.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.near is not None:
            await self.near.aclose()

    async def __aenter__(self) -> Cache:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"Cache(namespace={self.namespace!r}, backend={self.backend!r})"


def _close(coro: Awaitable[Any]) -> None:
    close = getattr(coro, "close", None)
    if close is not None:
        close()
