"""The Redis backend against real servers: layout, secrecy, and failures (down, hung, cut)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from scalekit.errors import SessionStoreUnavailableError, SessionTooLargeError
from scalekit.sessions import RedisSessionBackend, SessionStore
from scalekit.testing import FaultProxy, ManualClock
from tests.sessions.conftest import SERVER_KEY
from tests.support.processes import RedisProcess

pytestmark = pytest.mark.redis


def _store(client: aioredis.Redis | RedisCluster, prefix: str, **kwargs: float) -> SessionStore:
    return SessionStore(
        RedisSessionBackend(client), secret_key=SERVER_KEY, key_prefix=f"{prefix}:", **kwargs
    )


async def test_a_dump_of_redis_holds_no_usable_session_id(
    redis_client: aioredis.Redis, unique: str
) -> None:
    store = _store(redis_client, unique)
    session = await store.create({"user": "ada"}, user_id="ada")
    assert session.id is not None
    token = session.id.split(".")[1]
    dump = []
    async for key in redis_client.scan_iter(match=f"{unique}*"):
        dump.append(key)
        kind = await redis_client.type(key)
        if kind == b"hash":
            dump.extend(x for pair in (await redis_client.hgetall(key)).items() for x in pair)
        else:
            dump.extend(await redis_client.smembers(key))
    assert len(dump) > 2
    assert not any(token.encode() in item for item in dump)
    assert not any(b"ada" in item and b":u:" in item for item in dump)  # index key hashed too


async def test_redis_ttl_backs_the_idle_timeout(redis_client: aioredis.Redis, unique: str) -> None:
    store = _store(redis_client, unique, idle_timeout=120, absolute_lifetime=60)
    session = await store.create({"x": 1})
    assert session.id is not None
    key = store._keys.session_key(session.id)
    ttl = await redis_client.pttl(key)
    assert 0 < ttl <= 60_000  # min(idle, what is left of the absolute lifetime)


async def test_works_with_decode_responses(redis_url: str, unique: str) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        store = _store(client, unique)
        session = await store.create({"é": "ü"}, user_id=7)
        assert session.id is not None
        loaded = await store.load(session.id)
        assert loaded is not None
        assert dict(loaded) == {"é": "ü"}
        assert loaded.user_id == "7"
        assert await store.destroy_all_for_user(7) == 1
    finally:
        await client.aclose()


async def test_corrupt_stored_data_is_reported_not_silently_emptied(
    redis_client: aioredis.Redis, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = _store(redis_client, unique)
    session = await store.create({"x": 1})
    assert session.id is not None
    key = store._keys.session_key(session.id)
    await redis_client.hset(key, "d:x", "{not json")
    with caplog.at_level(logging.ERROR, logger="scalekit.sessions"):
        assert await store.load(session.id) is None
    assert "not valid JSON" in caplog.text
    assert await redis_client.exists(key)  # kept for inspection, not overwritten


@pytest.mark.redis_cluster
async def test_cluster_user_sessions_share_the_index_slot(
    cluster_client: RedisCluster, unique: str
) -> None:
    store = _store(cluster_client, unique)
    sessions = [await store.create({"n": i}, user_id="bob") for i in range(3)]
    index_slot = await cluster_client.cluster_keyslot(store._keys.index_key("bob"))
    for session in sessions:
        assert session.id is not None
        slot = await cluster_client.cluster_keyslot(store._keys.session_key(session.id))
        assert slot == index_slot
    assert await store.destroy_all_for_user("bob") == 3


async def test_redis_stopped_raises_unavailable_then_recovers(
    redis_process: RedisProcess, unique: str
) -> None:
    backend = RedisSessionBackend.from_url(redis_process.url)
    store = SessionStore(backend, secret_key=SERVER_KEY, key_prefix=f"{unique}:", timeout=2.0)
    async with store:
        session = await store.create({"x": 1})
        assert session.id is not None
        redis_process.stop()
        with pytest.raises(SessionStoreUnavailableError) as caught:
            await store.load(session.id)
        assert caught.value.__cause__ is not None
        session["y"] = 2
        with pytest.raises(SessionStoreUnavailableError):
            await store.save(session)
        redis_process.start()  # an empty server: the session is gone, nothing else breaks
        assert await store.load(session.id) is None
        assert (await store.create({"z": 3})).id is not None


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[FaultProxy]:
    host_port = redis_url.split("//", 1)[1].split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    async with FaultProxy(host or "127.0.0.1", int(port)) as fault_proxy:
        yield fault_proxy


async def test_hung_redis_is_bounded_by_the_store_timeout(
    proxy: FaultProxy, unique: str, redis_url: str
) -> None:
    client = aioredis.Redis(host=proxy.host, port=proxy.port)  # no socket timeout at all
    store = SessionStore(
        RedisSessionBackend(client), secret_key=SERVER_KEY, key_prefix=f"{unique}:", timeout=0.3
    )
    try:
        session = await store.create({"x": 1})
        assert session.id is not None
        proxy.blackhole()
        with pytest.raises(SessionStoreUnavailableError, match=r"within 0\.3s") as caught:
            await asyncio.wait_for(store.load(session.id), timeout=10)
        assert isinstance(caught.value.__cause__, TimeoutError)
        await proxy.restore()
        loaded = await store.load(session.id)
        assert loaded is not None
        assert dict(loaded) == {"x": 1}
    finally:
        await client.aclose()
        cleanup = aioredis.Redis.from_url(redis_url)
        async for key in cleanup.scan_iter(match=f"{unique}*"):
            await cleanup.delete(key)
        await cleanup.aclose()


async def test_connection_cut_mid_session_loses_nothing(
    proxy: FaultProxy, unique: str, redis_url: str
) -> None:
    client = aioredis.Redis(host=proxy.host, port=proxy.port, socket_timeout=1.0)
    store = SessionStore(
        RedisSessionBackend(client), secret_key=SERVER_KEY, key_prefix=f"{unique}:", timeout=2.0
    )
    try:
        session = await store.create({"x": 1})
        assert session.id is not None
        await proxy.cut()
        session["y"] = 2
        try:
            await store.save(session)
        except SessionStoreUnavailableError:
            await store.save(session)  # the caller's retry applies the same changes
        loaded = await store.load(session.id)
        assert loaded is not None
        assert dict(loaded) == {"x": 1, "y": 2}
    finally:
        await client.aclose()
        cleanup = aioredis.Redis.from_url(redis_url)
        async for key in cleanup.scan_iter(match=f"{unique}*"):
            await cleanup.delete(key)
        await cleanup.aclose()


async def test_scripts_flushed_from_redis_are_loaded_again(
    redis_process: RedisProcess, unique: str
) -> None:
    backend = RedisSessionBackend.from_url(redis_process.url)
    store = SessionStore(backend, secret_key=SERVER_KEY, key_prefix=f"{unique}:")
    async with store:
        session = await store.create({"x": 1})
        assert session.id is not None
        await backend._client.script_flush()  # a restarted or failed-over server has no scripts
        session["y"] = 2
        await store.save(session)
        loaded = await store.load(session.id)
        assert loaded is not None
        assert dict(loaded) == {"x": 1, "y": 2}


async def test_load_touches_and_reaps_through_a_script_only_when_needed(
    redis_client: aioredis.Redis, unique: str
) -> None:
    clock = ManualClock(wall_start=1_800_000_000.0)
    store = _store(redis_client, unique, idle_timeout=900, touch_interval=60)
    store._clock = clock
    session = await store.create({"x": 1})
    assert session.id is not None
    key = store._keys.session_key(session.id)
    await clock.advance(30)
    assert await store.load(session.id) is not None
    assert float(await redis_client.hget(key, "~t")) == 1_800_000_000.0  # not due: untouched
    await clock.advance(40)
    assert await store.load(session.id) is not None
    assert float(await redis_client.hget(key, "~t")) == 1_800_000_070.0  # due: touched
    assert 0 < await redis_client.pttl(key) <= 900_000
    await clock.advance(900)
    assert await store.load(session.id) is None
    assert not await redis_client.exists(key)  # the dead session was deleted, not just skipped


async def test_a_write_moves_the_idle_deadline_at_most_once_per_touch_interval(
    redis_client: aioredis.Redis, unique: str
) -> None:
    clock = ManualClock(wall_start=1_800_000_000.0)
    store = _store(redis_client, unique, idle_timeout=900, touch_interval=60)
    store._clock = clock
    session = await store.create({"n": 0})
    assert session.id is not None
    key = store._keys.session_key(session.id)
    await clock.advance(10)
    session["n"] = 1
    await store.save(session)
    assert float(await redis_client.hget(key, "~t")) == 1_800_000_000.0
    await clock.advance(60)
    session["n"] = 2
    await store.save(session)
    assert float(await redis_client.hget(key, "~t")) == 1_800_000_070.0
    assert session.version == 3


async def test_a_save_of_thousands_of_keys_takes_the_chunked_path(
    redis_client: aioredis.Redis, unique: str
) -> None:
    store = _store(redis_client, unique, max_bytes=200_000)
    session = await store.create({"seed": 0})
    assert session.id is not None
    for i in range(2000):  # 2 * 2000 arguments: more than one Lua unpack() takes
        session[f"k{i}"] = i
    await store.save(session)
    loaded = await store.load(session.id)
    assert loaded is not None
    assert len(loaded) == 2001
    assert loaded["k1999"] == 1999
    for i in range(2000):
        del loaded[f"k{i}"]
    loaded["big"] = "x" * 300_000
    with pytest.raises(SessionTooLargeError):
        await store.save(loaded)
    del loaded["big"]
    await store.save(loaded)
    again = await store.load(session.id)
    assert again is not None
    assert dict(again) == {"seed": 0}
