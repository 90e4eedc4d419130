"""The Redis (and Redis Cluster) session backend: one hash per session, Lua for every write.

Key layout (``P`` is the store's ``key_prefix``, ``T`` the 4-hex-digit slot tag of the id)::

    P{T}:s:<HMAC(id)>     hash   d:<key> -> JSON text, plus metadata fields ~c ~t ~u ~i ~v ~n
    P{T}:u:<HMAC(user)>   set    the session keys of one user (the per-user index)

A session bound to a user carries the user's tag, so it and the user's index live in the same
cluster slot and a single Lua script updates both atomically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from scalekit._drivers import require
from scalekit._redact import redact_text
from scalekit.errors import SessionStoreUnavailableError
from scalekit.sessions.backend import Limits, Outcome, StoredSession, WriteResult

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

__all__ = ["RedisSessionBackend"]

_PRELUDE = """
local function expire(key)
  local idx = redis.call('HGET', key, '~i')
  redis.call('DEL', key)
  if idx then redis.call('SREM', idx, key) end
end
local function alive(key, now, idle, absolute)
  local m = redis.call('HMGET', key, '~c', '~t')
  if not m[1] then return nil end
  local c = tonumber(m[1])
  if now - tonumber(m[2]) >= idle or now - c >= absolute then
    expire(key)
    return nil
  end
  return c
end
local function ttl_ms(c, now, idle, absolute)
  local r = math.min(idle, c + absolute - now)
  if r < 0.001 then r = 0.001 end
  return math.ceil(r * 1000)
end
local function index_add(idx, key, absolute)
  for _, m in ipairs(redis.call('SMEMBERS', idx)) do
    if redis.call('EXISTS', m) == 0 then redis.call('SREM', idx, m) end
  end
  redis.call('SADD', idx, key)
  local ms = math.ceil(absolute * 1000)
  if redis.call('PTTL', idx) < ms then redis.call('PEXPIRE', idx, ms) end
end
-- ARGV[start] = number of fields to set, then name/value pairs, then the number to delete and
-- their names. plan() returns the data size after the changes; write() applies them.
local function plan(key, size, start)
  local i = start + 1
  for _ = 1, tonumber(ARGV[start]) do
    local f, v = ARGV[i], ARGV[i + 1]
    local old = redis.call('HSTRLEN', key, f)
    if old > 0 then size = size - #f - old end
    size = size + #f + #v
    i = i + 2
  end
  local ndel = tonumber(ARGV[i])
  for j = 1, ndel do
    local f = ARGV[i + j]
    local old = redis.call('HSTRLEN', key, f)
    if old > 0 then size = size - #f - old end
  end
  return size
end
local function write(key, start, meta)
  local nset = tonumber(ARGV[start])
  local i = start + 1
  local args = meta
  for k = 0, 2 * nset - 1 do
    args[#args + 1] = ARGV[i + k]
    if #args >= 1000 then
      redis.call('HSET', key, unpack(args))
      args = {}
    end
  end
  if #args > 0 then redis.call('HSET', key, unpack(args)) end
  i = i + 2 * nset
  local names = {}
  for k = 1, tonumber(ARGV[i]) do
    names[#names + 1] = ARGV[i + k]
    if #names == 500 then
      redis.call('HDEL', key, unpack(names))
      names = {}
    end
  end
  if #names > 0 then redis.call('HDEL', key, unpack(names)) end
end
"""

# Run only when a load (a plain HGETALL) found the session dead or due for a touch: re-checks
# both atomically, so a session another instance just refreshed is neither reaped nor resurrected.
# KEYS: session; ARGV: now idle absolute max_bytes touch.
# Returns 1 (alive, touched if due) or 0 (dead, and deleted).
_TOUCH = """
local key = KEYS[1]
local now, idle, absolute = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local c = alive(key, now, idle, absolute)
if not c then return 0 end
if now - tonumber(redis.call('HGET', key, '~t')) >= tonumber(ARGV[5]) then
  redis.call('HSET', key, '~t', ARGV[1])
  redis.call('PEXPIRE', key, ttl_ms(c, now, idle, absolute))
end
return 1
"""

# KEYS: session [, index]; ARGV: now idle absolute max_bytes user version changes...
_CREATE = """
local key = KEYS[1]
local now, idle, absolute = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if redis.call('EXISTS', key) == 1 then return {3, 0, 0} end
local size = plan(key, 0, 7)
if size > tonumber(ARGV[4]) then return {2, 0, size} end
local meta = {'~c', ARGV[1], '~t', ARGV[1], '~v', ARGV[6], '~n', size}
if KEYS[2] then
  meta[9], meta[10], meta[11], meta[12] = '~u', ARGV[5], '~i', KEYS[2]
end
write(key, 7, meta)
if KEYS[2] then index_add(KEYS[2], key, absolute) end
redis.call('PEXPIRE', key, ttl_ms(now, now, idle, absolute))
return {1, tonumber(ARGV[6]), size}
"""

# KEYS: session; ARGV: now idle absolute max_bytes touch changes...
# The hot path of every write request, so it is lean: no prelude (each function defined costs a
# closure per call), one HMGET for the metadata and the old values of the changed fields (their
# sizes), one HSET (and an HDEL for deleted keys) straight from ARGV: redis.call is the expensive
# part of a script. The idle deadline moves (~t, PEXPIRE) only when the last touch is older than
# the touch interval, as for loads, which keeps the key's TTL and ~t in step.
_MERGE = """
local key = KEYS[1]
local now = tonumber(ARGV[1])
local nset = tonumber(ARGV[6])
local base = 8 + 2 * nset
local ndel = tonumber(ARGV[base - 1])
local names = {'~c', '~t', '~n', '~v'}
for j = 1, nset do names[4 + j] = ARGV[5 + 2 * j] end
for j = 0, ndel - 1 do names[5 + nset + j] = ARGV[base + j] end
local m = redis.call('HMGET', key, unpack(names))
if not m[1] then return {0, 0, 0} end
local c, t = tonumber(m[1]), tonumber(m[2])
local idle, absolute = tonumber(ARGV[2]), tonumber(ARGV[3])
if now - t >= idle or now - c >= absolute then
  local idx = redis.call('HGET', key, '~i')
  redis.call('DEL', key)
  if idx then redis.call('SREM', idx, key) end
  return {0, 0, 0}
end
local size = tonumber(m[3])
for j = 1, nset + ndel do
  local old = m[4 + j]
  if old then size = size - #names[4 + j] - #old end
end
for j = 1, nset do size = size + #ARGV[5 + 2 * j] + #ARGV[6 + 2 * j] end
if size > tonumber(ARGV[4]) then return {2, 0, size} end
local v = tonumber(m[4]) + 1
local touch = now - t >= tonumber(ARGV[5])
if touch then
  redis.call('HSET', key, '~n', size, '~v', v, '~t', ARGV[1], unpack(ARGV, 7, 6 + 2 * nset))
else
  redis.call('HSET', key, '~n', size, '~v', v, unpack(ARGV, 7, 6 + 2 * nset))
end
if ndel > 0 then redis.call('HDEL', key, unpack(ARGV, base, base + ndel - 1)) end
if touch then
  local r = math.min(idle, c + absolute - now)
  if r < 0.001 then r = 0.001 end
  redis.call('PEXPIRE', key, math.ceil(r * 1000))
end
return {1, v, size}
"""

# The same merge for a save that changes thousands of keys at once (more than one unpack()
# takes): sizes by HSTRLEN, writes in chunks. KEYS and ARGV as for _MERGE.
_MERGE_MANY = """
local key = KEYS[1]
local now, idle, absolute = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local m = redis.call('HMGET', key, '~c', '~t', '~n', '~v')
if not m[1] then return {0, 0, 0} end
local c = tonumber(m[1])
if now - tonumber(m[2]) >= idle or now - c >= absolute then
  expire(key)
  return {0, 0, 0}
end
local size = plan(key, tonumber(m[3]), 6)
if size > tonumber(ARGV[4]) then return {2, 0, size} end
local v = tonumber(m[4]) + 1
write(key, 6, {'~n', size, '~t', ARGV[1], '~v', v})
redis.call('PEXPIRE', key, ttl_ms(c, now, idle, absolute))
return {1, v, size}
"""

# KEYS: old new [, index to bind]; ARGV: now idle absolute max_bytes user changes...
_ROTATE = """
local old, new = KEYS[1], KEYS[2]
local now, idle, absolute = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local c = alive(old, now, idle, absolute)
if not c then return {0, 0, 0} end
if redis.call('EXISTS', new) == 1 then return {3, 0, 0} end
local size = plan(old, tonumber(redis.call('HGET', old, '~n')), 6)
if size > tonumber(ARGV[4]) then return {2, 0, size} end
write(old, 6, {'~n', size, '~t', ARGV[1]})
local idx = redis.call('HGET', old, '~i')
if idx then redis.call('SREM', idx, old) end
redis.call('RENAME', old, new)
local v = redis.call('HINCRBY', new, '~v', 1)
if KEYS[3] then
  c = now
  idx = KEYS[3]
  redis.call('HSET', new, '~c', ARGV[1], '~u', ARGV[5], '~i', idx)
end
if idx then index_add(idx, new, absolute) end
redis.call('PEXPIRE', new, ttl_ms(c, now, idle, absolute))
return {1, v, size}
"""

# First half of a rotation across cluster slots: take the old session out atomically.
_CLAIM = """
local key = KEYS[1]
local c = alive(key, tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))
if not c then return false end
local all = redis.call('HGETALL', key)
local idx = redis.call('HGET', key, '~i')
redis.call('DEL', key)
if idx then redis.call('SREM', idx, key) end
return all
"""

_DESTROY = """
local idx = redis.call('HGET', KEYS[1], '~i')
local n = redis.call('DEL', KEYS[1])
if idx then redis.call('SREM', idx, KEYS[1]) end
return n
"""

_DESTROY_INDEX = """
local n = 0
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do n = n + redis.call('DEL', m) end
redis.call('DEL', KEYS[1])
return n
"""

_COUNT_INDEX = """
local now, idle, absolute = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local n = 0
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if alive(m, now, idle, absolute) then n = n + 1 else redis.call('SREM', KEYS[1], m) end
end
return n
"""

_OUTCOMES = {0: Outcome.GONE, 1: Outcome.OK, 2: Outcome.TOO_LARGE, 3: Outcome.EXISTS}


_DATA_PREFIXES = (b"d:", "d:")  # a data field's name, from a client with or without decoding


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _tag(key: str) -> str:
    start = key.index("{") + 1
    return key[start : key.index("}", start)]


def _changes(set_fields: Mapping[str, str], delete_fields: Sequence[str]) -> list[str | int]:
    args: list[str | int] = [len(set_fields)]
    for name, text in set_fields.items():
        args.append("d:" + name)
        args.append(text)
    args.append(len(delete_fields))
    args.extend("d:" + name for name in delete_fields)
    return args


def _decode_hash(flat: Sequence[Any]) -> tuple[dict[str, str], dict[str, str]]:
    fields: dict[str, str] = {}
    meta: dict[str, str] = {}
    for i in range(0, len(flat), 2):
        name = _str(flat[i])
        if name.startswith("d:"):
            fields[name[2:]] = _str(flat[i + 1])
        else:
            meta[name] = _str(flat[i + 1])
    return fields, meta


def _times(limits: Limits) -> list[str]:
    return [repr(limits.now), repr(limits.idle_timeout), repr(limits.absolute_lifetime)]


class RedisSessionBackend:
    """Sessions in Redis or Redis Cluster, every write an atomic Lua script.

    Args:
        client: a ``redis.asyncio.Redis`` or ``redis.asyncio.cluster.RedisCluster`` (with or
            without ``decode_responses``). The caller owns it: :meth:`aclose` leaves it open.
            Give it a ``socket_timeout``; the store bounds every call with its own ``timeout``
            as well.

    Connection failures and Redis timeouts raise
    :class:`~scalekit.errors.SessionStoreUnavailableError` (the driver error is its cause).
    """

    def __init__(self, client: Redis | RedisCluster) -> None:
        redis_asyncio = require("redis.asyncio")
        exceptions = require("redis.exceptions")
        cluster_cls = require("redis.asyncio.cluster").RedisCluster
        self._client = client
        self._owns_client = False
        self._cluster = isinstance(client, cluster_cls)
        del redis_asyncio
        self._unavailable: tuple[type[BaseException], ...] = (
            exceptions.ConnectionError,
            exceptions.TimeoutError,
            exceptions.ClusterError,
            exceptions.TryAgainError,
            OSError,
        )
        self._no_script: type[BaseException] = exceptions.NoScriptError
        self._constants_cache: tuple[tuple[float, float, int, float], list[bytes]] | None = None
        register = client.register_script
        self._touch = register(_PRELUDE + _TOUCH)
        self._create = register(_PRELUDE + _CREATE)
        self._merge = register(_MERGE)
        self._merge_many = register(_PRELUDE + _MERGE_MANY)
        self._rotate = register(_PRELUDE + _ROTATE)
        self._claim = register(_PRELUDE + _CLAIM)
        self._destroy = register(_DESTROY)
        self._destroy_index = register(_DESTROY_INDEX)
        self._count_index = register(_PRELUDE + _COUNT_INDEX)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisSessionBackend:
        """A backend that owns a new ``redis.asyncio.Redis`` client (closed by :meth:`aclose`).

        Args:
            url: a ``redis://`` or ``rediss://`` URL.
            **kwargs: passed to ``redis.asyncio.Redis.from_url`` (``socket_timeout`` defaults
                to 1 second and ``socket_connect_timeout`` to 1 second).
        """
        redis_asyncio = require("redis.asyncio")
        kwargs.setdefault("socket_timeout", 1.0)
        kwargs.setdefault("socket_connect_timeout", 1.0)
        backend = cls(redis_asyncio.Redis.from_url(url, **kwargs))
        backend._owns_client = True
        return backend

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        # EVALSHA straight on the client (what redis-py's Script.__call__ does, minus a tuple
        # copy and an import per call); a server that lost its script cache gets it again.
        client: Any = self._client
        try:
            try:
                return await client.evalsha(script.sha, len(keys), *keys, *args)
            except self._no_script:
                script.sha = await client.script_load(script.script)
                return await client.evalsha(script.sha, len(keys), *keys, *args)
        except self._unavailable as exc:
            raise self._error(exc) from exc

    def _constants(self, limits: Limits) -> list[bytes]:
        """``idle absolute max_bytes touch`` as bytes, encoded once per configuration."""
        key = (
            limits.idle_timeout,
            limits.absolute_lifetime,
            limits.max_bytes,
            limits.touch_interval,
        )
        cached = self._constants_cache
        if cached is None or cached[0] != key:
            values = (repr(key[0]), repr(key[1]), str(key[2]), repr(key[3]))
            cached = self._constants_cache = (key, [v.encode() for v in values])
        return cached[1]

    @staticmethod
    def _error(exc: BaseException) -> SessionStoreUnavailableError:
        return SessionStoreUnavailableError(
            f"the session store (Redis) failed: {redact_text(str(exc))}; check that Redis "
            "is reachable, then retry"
        )

    @staticmethod
    def _result(raw: Sequence[Any]) -> WriteResult:
        return WriteResult(_OUTCOMES[int(raw[0])], version=int(raw[1]), size=int(raw[2]))

    async def load(self, key: str, limits: Limits) -> StoredSession | None:
        """See :meth:`SessionBackend.load`.

        A plain ``HGETALL`` (a Lua script costs Redis several times more): the deadlines are
        checked here against the metadata it returns, with the same clock and rules the scripts
        use. Only a session found dead or due for a touch costs a second call, a script that
        re-checks atomically before it deletes or touches anything.
        """
        try:
            flat = await self._client.hgetall(key)
        except self._unavailable as exc:
            raise self._error(exc) from exc
        fields: dict[str, str] = {}
        meta: dict[str, Any] = {}
        for name, value in flat.items():
            if name[:2] in _DATA_PREFIXES:
                fields[_str(name)[2:]] = _str(value)
            else:
                meta[_str(name)] = value
        try:
            created, touched = float(meta["~c"]), float(meta["~t"])
        except (KeyError, ValueError):
            return None
        now = limits.now
        if (
            now - touched >= limits.idle_timeout
            or now - created >= limits.absolute_lifetime
            or now - touched >= limits.touch_interval
        ):
            args = [repr(now), *self._constants(limits)]
            if not await self._call(self._touch, [key], args):
                return None
        user = meta.get("~u")
        return StoredSession(
            fields, created, None if user is None else _str(user), int(meta.get("~v", 0))
        )

    async def create(
        self,
        key: str,
        fields: Mapping[str, str],
        limits: Limits,
        *,
        user_id: str | None = None,
        index_key: str | None = None,
        version: int = 1,
    ) -> WriteResult:
        """See :meth:`SessionBackend.create`."""
        keys = [key] if index_key is None else [key, index_key]
        args = [*_times(limits), limits.max_bytes, user_id or "", version, *_changes(fields, ())]
        return self._result(await self._call(self._create, keys, args))

    async def merge(
        self,
        key: str,
        set_fields: Mapping[str, str],
        delete_fields: Sequence[str],
        limits: Limits,
    ) -> WriteResult:
        """See :meth:`SessionBackend.merge`."""
        args = [repr(limits.now), *self._constants(limits), *_changes(set_fields, delete_fields)]
        script = (
            self._merge if 2 * len(set_fields) + len(delete_fields) < 3000 else self._merge_many
        )
        return self._result(await self._call(script, [key], args))

    async def rotate(
        self,
        old_key: str,
        new_key: str,
        set_fields: Mapping[str, str],
        delete_fields: Sequence[str],
        limits: Limits,
        *,
        bind: tuple[str, str] | None = None,
    ) -> WriteResult:
        """See :meth:`SessionBackend.rotate`.

        On a cluster, binding an anonymous session to a user moves it to the user's slot: the
        old session is first taken out atomically (its id dies at once, so a fixated id never
        reaches the authenticated session), then the new one is created in the user's slot. If
        Redis fails between the two steps the pre-login data is lost and the error raised.
        """
        if not self._cluster or _tag(old_key) == _tag(new_key):
            keys = [old_key, new_key] if bind is None else [old_key, new_key, bind[1]]
            user = "" if bind is None else bind[0]
            args = [*_times(limits), limits.max_bytes, user, *_changes(set_fields, delete_fields)]
            return self._result(await self._call(self._rotate, keys, args))
        if bind is None:  # pragma: no cover - the store keeps the tag when not binding
            raise ValueError("a rotation across cluster slots must bind the session to a user")
        raw = await self._call(self._claim, [old_key], _times(limits))
        if raw is None:
            return WriteResult(Outcome.GONE)
        fields, meta = _decode_hash(raw)
        fields.update(set_fields)
        for name in delete_fields:
            fields.pop(name, None)
        version = int(meta.get("~v", 0)) + 1
        return await self.create(
            new_key, fields, limits, user_id=bind[0], index_key=bind[1], version=version
        )

    async def destroy(self, key: str) -> bool:
        """See :meth:`SessionBackend.destroy`."""
        return bool(await self._call(self._destroy, [key], []))

    async def destroy_index(self, index_key: str) -> int:
        """See :meth:`SessionBackend.destroy_index`."""
        return int(await self._call(self._destroy_index, [index_key], []))

    async def count_index(self, index_key: str, limits: Limits) -> int:
        """See :meth:`SessionBackend.count_index`."""
        return int(await self._call(self._count_index, [index_key], _times(limits)))

    async def aclose(self) -> None:
        """Close the client if :meth:`from_url` created it."""
        if self._owns_client:
            await self._client.aclose()

    def __repr__(self) -> str:
        kind = "cluster" if self._cluster else "standalone"
        return f"RedisSessionBackend({kind})"
