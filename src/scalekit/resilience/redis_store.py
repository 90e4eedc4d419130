"""The Redis-backed :class:`~scalekit.resilience.store.BreakerStore`.

One hash per breaker name holds the shared state; every operation is one Lua script (one round
trip), atomic, and timed by the Redis server's clock (``TIME``), so clock skew between hosts does
not matter. The key is hash-tagged (``scalekit:cb:{name}``), and every script touches only that
key, so it works unchanged on Redis Cluster.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scalekit._drivers import require
from scalekit.errors import ConfigurationError
from scalekit.resilience.store import SharedState, _check

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["RedisBreakerStore"]

# ARGV[1] = operation; the rest depends on it. Returns {admitted, state, remaining_ms, generation}.
_SCRIPT = """
local key = KEYS[1]
local op = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', key, 'state', 'until', 'gen', 'permits', 'calls', 'fail', 'slow')
local state = h[1] or 'closed'
local untilms = tonumber(h[2]) or 0
local gen = tonumber(h[3]) or 0
local permits = tonumber(h[4]) or 0
local calls = tonumber(h[5]) or 0
local fail = tonumber(h[6]) or 0
local slow = tonumber(h[7]) or 0
local ttl = tonumber(ARGV[2])
local admitted = 0

local function remaining()
  if state == 'closed' then return 0 end
  local r = untilms - now
  if r < 0 then return 0 end
  return r
end
local function save()
  redis.call('HSET', key, 'state', state, 'until', untilms, 'gen', gen, 'permits', permits,
             'calls', calls, 'fail', fail, 'slow', slow)
  redis.call('PEXPIRE', key, ttl)
end

if op == 'trip' then
  if not (state == 'open' and untilms > now) then
    state = 'open'; untilms = now + tonumber(ARGV[3]); gen = gen + 1
    save()
  end
elseif op == 'acquire' then
  local maxc = tonumber(ARGV[3])
  if state == 'closed' or (state == 'open' and now < untilms) then
    -- nothing to hand out
  elseif state == 'open' or now >= untilms then
    state = 'half_open'; untilms = now + tonumber(ARGV[4]); gen = gen + 1
    permits = maxc - 1; calls = 0; fail = 0; slow = 0; admitted = 1
    save()
  elseif permits > 0 then
    permits = permits - 1; admitted = 1
    save()
  end
elseif op == 'release' then
  if state == 'half_open' then permits = permits + 1; save() end
elseif op == 'report' then
  if state == 'half_open' and gen == tonumber(ARGV[3]) then
    calls = calls + 1; fail = fail + tonumber(ARGV[4]); slow = slow + tonumber(ARGV[5])
    local maxc = tonumber(ARGV[6])
    if calls >= maxc then
      local fr = tonumber(ARGV[7]); local sr = tonumber(ARGV[8])
      gen = gen + 1
      if (fail > 0 and fail >= fr * calls) or (slow > 0 and slow >= sr * calls) then
        state = 'open'; untilms = now + tonumber(ARGV[9])
      else
        state = 'closed'; untilms = 0
      end
    end
    save()
  end
elseif op == 'reset' then
  state = 'closed'; untilms = 0; gen = gen + 1
  save()
end
return {admitted, state, remaining(), gen}
"""


class RedisBreakerStore:
    """Share circuit-breaker state through Redis (standalone or Cluster).

    ``CircuitBreaker("payments", store=RedisBreakerStore(redis))`` in every process makes them
    trip together (within ``sync_interval``), share one half-open gate, and recover together.

    Args:
        client: a ``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster`` the app owns.
        prefix: key prefix; the key of breaker ``name`` is ``{prefix}:{{name}}``.
        sync_interval: seconds between background reads of the shared state per breaker; the
            longest a process keeps calling after another one tripped.
        timeout: seconds a store operation may take before the breaker falls back to local
            state for that decision.
        key_ttl: seconds an idle breaker's key lives in Redis (renewed on every write).

    Raises:
        MissingDependencyError: redis is not installed.
        ConfigurationError: an argument is out of range.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis | redis.asyncio.RedisCluster,
        *,
        prefix: str = "scalekit:cb",
        sync_interval: float = 0.5,
        timeout: float = 0.25,
        key_ttl: float = 7 * 86400.0,
    ) -> None:
        require("redis.asyncio")
        _check(sync_interval, timeout)
        if not isinstance(prefix, str) or not prefix:
            raise ConfigurationError(f"prefix={prefix!r}: must be a non-empty str")
        if not isinstance(key_ttl, (int, float)) or key_ttl < 1:
            raise ConfigurationError(f"key_ttl={key_ttl!r}: must be seconds >= 1")
        self.client = client
        self.prefix = prefix
        self.sync_interval = float(sync_interval)
        self.timeout = float(timeout)
        self._ttl_ms = str(int(key_ttl * 1000))
        self._sha: str | None = None

    def key(self, name: str) -> str:
        """The Redis key of breaker ``name`` (hash-tagged for Cluster)."""
        return f"{self.prefix}:{{{name}}}"

    async def _run(self, name: str, *args: Any) -> SharedState:
        exceptions = require("redis.exceptions")
        key = self.key(name)
        argv = (args[0], self._ttl_ms, *args[1:])
        reply: Any
        if self._sha is not None:
            try:
                reply = await self.client.evalsha(self._sha, 1, key, *argv)
            except exceptions.NoScriptError:
                reply = await self.client.eval(_SCRIPT, 1, key, *argv)
        else:
            reply = await self.client.eval(_SCRIPT, 1, key, *argv)
            from hashlib import sha1

            self._sha = sha1(_SCRIPT.encode()).hexdigest()
        admitted, state, remaining_ms, generation = reply
        if isinstance(state, bytes):
            state = state.decode()
        return SharedState(str(state), int(remaining_ms) / 1000.0, int(generation), bool(admitted))

    async def read(self, name: str) -> SharedState:
        """See :meth:`BreakerStore.read`."""
        return await self._run(name, "read")

    async def trip(self, name: str, open_seconds: float) -> SharedState:
        """See :meth:`BreakerStore.trip`."""
        return await self._run(name, "trip", int(open_seconds * 1000))

    async def acquire_trial(self, name: str, max_calls: int, lease_seconds: float) -> SharedState:
        """See :meth:`BreakerStore.acquire_trial`."""
        return await self._run(name, "acquire", max_calls, int(lease_seconds * 1000))

    async def release_trial(self, name: str) -> SharedState:
        """See :meth:`BreakerStore.release_trial`."""
        return await self._run(name, "release")

    async def report_trial(
        self,
        name: str,
        *,
        generation: int,
        failed: bool,
        slow: bool,
        max_calls: int,
        failure_rate_threshold: float,
        slow_call_rate_threshold: float,
        open_seconds: float,
    ) -> SharedState:
        """See :meth:`BreakerStore.report_trial`."""
        return await self._run(
            name,
            "report",
            generation,
            int(failed),
            int(slow),
            max_calls,
            repr(float(failure_rate_threshold)),
            repr(float(slow_call_rate_threshold)),
            int(open_seconds * 1000),
        )

    async def reset(self, name: str) -> SharedState:
        """See :meth:`BreakerStore.reset`."""
        return await self._run(name, "reset")

    def __repr__(self) -> str:
        return f"RedisBreakerStore(prefix={self.prefix!r}, sync_interval={self.sync_interval})"
