"""SessionStore semantics, run on the memory backend, real Redis and the Redis Cluster."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from scalekit.errors import (
    ConfigurationError,
    SessionDataError,
    SessionTooLargeError,
)
from scalekit.sessions import Session, SessionStore
from scalekit.testing import ManualClock

MakeStore = Callable[..., SessionStore]


async def test_create_then_load_from_another_instance(make_store: MakeStore) -> None:
    a, b = make_store(), make_store()
    created = await a.create({"cart": [1, 2], "name": "ada"})
    assert created.id is not None
    loaded = await b.load(created.id)
    assert loaded is not None
    assert dict(loaded) == {"cart": [1, 2], "name": "ada"}
    assert loaded.version == created.version == 1


async def test_ids_have_256_random_bits_and_a_slot_tag(make_store: MakeStore) -> None:
    store = make_store()
    ids = {(await store.create({"k": i})).id for i in range(20)}
    assert len(ids) == 20
    for session_id in ids:
        assert session_id is not None
        tag, _, token = session_id.partition(".")
        assert len(tag) == 4
        assert len(token) == 43  # token_urlsafe(32): 256 bits


async def test_unknown_or_malformed_ids_are_never_adopted(make_store: MakeStore) -> None:
    store = make_store()
    assert await store.load("abcd." + "A" * 43) is None
    assert await store.load("attacker-chosen") is None
    assert await store.load("") is None
    session = store.new({"x": 1})
    await store.save(session)
    assert session.id is not None
    assert session.id != "abcd." + "A" * 43


async def test_a_foreign_server_key_cannot_read_sessions(make_store: MakeStore) -> None:
    created = await make_store().create({"x": 1})
    assert created.id is not None
    other = make_store(secret_key="another-server-key-0123456789abcdef")
    assert await other.load(created.id) is None


async def test_unchanged_session_is_not_written(make_store: MakeStore) -> None:
    store = make_store()
    created = await store.create({"a": {"b": [1]}})
    assert created.id is not None
    loaded = await store.load(created.id)
    assert loaded is not None
    assert not loaded.modified
    await store.save(loaded)
    assert loaded.version == 1


async def test_nested_mutation_is_detected_and_saved(make_store: MakeStore) -> None:
    store = make_store()
    created = await store.create({"cart": [1]})
    assert created.id is not None
    loaded = await store.load(created.id)
    assert loaded is not None
    loaded["cart"].append(2)
    assert loaded.modified
    await store.save(loaded)
    again = await store.load(created.id)
    assert again is not None
    assert again["cart"] == [1, 2]
    assert again.version == 2


async def test_concurrent_updates_of_different_keys_both_survive(make_store: MakeStore) -> None:
    a, b = make_store(), make_store()
    created = await a.create({"seen": 0})
    assert created.id is not None
    # Both instances hold the same snapshot before either writes: the classic lost update.
    first, second = await asyncio.gather(a.load(created.id), b.load(created.id))
    assert first is not None
    assert second is not None
    first["theme"] = "dark"
    second["lang"] = "fr"
    del second["seen"]
    await asyncio.gather(a.save(first), b.save(second))
    final = await a.load(created.id)
    assert final is not None
    assert dict(final) == {"theme": "dark", "lang": "fr"}
    assert final.version == 3


async def test_same_key_is_last_writer_wins(make_store: MakeStore) -> None:
    store = make_store()
    created = await store.create({"n": 0})
    assert created.id is not None
    first, second = await store.load(created.id), await store.load(created.id)
    assert first is not None
    assert second is not None
    first["n"] = 1
    second["n"] = 2
    await store.save(first)
    await store.save(second)
    final = await store.load(created.id)
    assert final is not None
    assert final["n"] == 2


async def test_size_limit_raises_and_writes_nothing(make_store: MakeStore) -> None:
    store = make_store(max_bytes=200)
    with pytest.raises(SessionTooLargeError, match="200-byte limit"):
        await store.create({"blob": "x" * 300})
    created = await store.create({"small": "y"})
    assert created.id is not None
    created["blob"] = "x" * 300
    with pytest.raises(SessionTooLargeError):
        await store.save(created)
    loaded = await store.load(created.id)
    assert loaded is not None
    assert dict(loaded) == {"small": "y"}


async def test_size_limit_counts_what_other_instances_added(make_store: MakeStore) -> None:
    a, b = make_store(max_bytes=200), make_store(max_bytes=200)
    created = await a.create({"k": "v"})
    assert created.id is not None
    first, second = await a.load(created.id), await b.load(created.id)
    assert first is not None
    assert second is not None
    first["one"] = "x" * 100
    second["two"] = "x" * 100  # alone it fits; merged with "one" it does not
    await a.save(first)
    with pytest.raises(SessionTooLargeError):
        await b.save(second)


async def test_non_json_values_and_keys_raise_clear_errors(make_store: MakeStore) -> None:
    store = make_store()
    session = store.new()
    with pytest.raises(SessionDataError, match="keys must be str"):
        session[1] = "x"  # type: ignore[index]
    session["when"] = {1, 2}
    with pytest.raises(SessionDataError, match="cannot be stored as JSON"):
        await store.save(session)
    session["when"] = float("nan")
    with pytest.raises(SessionDataError):
        await store.save(session)
    assert session.id is None


async def test_sliding_idle_timeout(make_store: MakeStore, clock: ManualClock) -> None:
    store = make_store(idle_timeout=900, touch_interval=0)
    created = await store.create({"x": 1})
    assert created.id is not None
    for _ in range(5):  # active every 10 minutes for 50 minutes: stays alive
        await clock.advance(600)
        assert await store.load(created.id) is not None
    await clock.advance(900)
    assert await store.load(created.id) is None


async def test_touch_is_throttled(make_store: MakeStore, clock: ManualClock) -> None:
    store = make_store(idle_timeout=900, touch_interval=60)
    created = await store.create({"x": 1})
    assert created.id is not None
    await clock.advance(30)
    assert await store.load(created.id) is not None  # not touched: last touch 30 s ago
    await clock.advance(871)  # 901 s after the last touch
    assert await store.load(created.id) is None


async def test_absolute_lifetime_caps_an_active_session(
    make_store: MakeStore, clock: ManualClock
) -> None:
    store = make_store(idle_timeout=900, absolute_lifetime=3600, touch_interval=0)
    created = await store.create({"x": 1})
    assert created.id is not None
    for _ in range(7):
        await clock.advance(500)
        assert await store.load(created.id) is not None
    await clock.advance(100)  # 3600 s after creation
    assert await store.load(created.id) is None


async def test_expired_session_is_not_resurrected_by_a_save(
    make_store: MakeStore, clock: ManualClock
) -> None:
    store = make_store(idle_timeout=900)
    created = await store.create({"x": 1})
    assert created.id is not None
    loaded = await store.load(created.id)
    assert loaded is not None
    await clock.advance(1000)
    loaded["y"] = 2
    await store.save(loaded)
    assert loaded.ended
    assert loaded.id is None
    assert await store.load(created.id) is None


async def test_destroyed_elsewhere_is_not_resurrected(make_store: MakeStore) -> None:
    a, b = make_store(), make_store()
    created = await a.create({"x": 1})
    assert created.id is not None
    held = await b.load(created.id)
    assert held is not None
    assert await a.destroy(created.id)
    held["late"] = True
    await b.save(held)
    assert held.ended
    assert await a.load(created.id) is None


async def test_regenerate_keeps_data_and_kills_the_old_id(make_store: MakeStore) -> None:
    store = make_store()
    created = await store.create({"cart": [1]})
    old_id = created.id
    assert old_id is not None
    created["more"] = 1
    await store.regenerate(created)
    assert created.id not in (None, old_id)
    assert created.id is not None
    assert created.id[:4] == old_id[:4]  # same slot: one atomic script
    assert await store.load(old_id) is None
    moved = await store.load(created.id)
    assert moved is not None
    assert dict(moved) == {"cart": [1], "more": 1}


async def test_login_rotates_binds_and_restarts_lifetime(
    make_store: MakeStore, clock: ManualClock
) -> None:
    store = make_store(absolute_lifetime=3600, idle_timeout=900, touch_interval=0)
    anon = await store.create({"cart": [1]})
    fixated = anon.id
    assert fixated is not None
    await clock.advance(600)
    await store.regenerate(anon, user_id=42)
    assert anon.user_id == "42"
    assert anon.id is not None
    assert anon.id != fixated
    assert anon.created == clock.time()
    assert await store.load(fixated) is None  # the planted id is worthless after login
    for _ in range(6):  # 3300 s after login but 3900 s after the anonymous session began
        await clock.advance(550)
        assert await store.load(anon.id) is not None
    loaded = await store.load(anon.id)
    assert loaded is not None
    assert loaded.user_id == "42"
    assert dict(loaded) == {"cart": [1]}


async def test_destroy_all_for_user(make_store: MakeStore) -> None:
    store = make_store()
    phone = await store.create({"d": "phone"}, user_id="u1")
    laptop = store.new({"d": "laptop"})
    await store.save(laptop)
    await store.regenerate(laptop, user_id="u1")
    other = await store.create({"d": "other"}, user_id="u2")
    assert await store.count_for_user("u1") == 2
    assert await store.destroy_all_for_user("u1") == 2
    assert phone.id is not None
    assert laptop.id is not None
    assert other.id is not None
    assert await store.load(phone.id) is None
    assert await store.load(laptop.id) is None
    assert await store.load(other.id) is not None
    assert await store.count_for_user("u1") == 0
    assert await store.destroy_all_for_user("u1") == 0


async def test_destroy_removes_the_session_from_its_user_index(make_store: MakeStore) -> None:
    store = make_store()
    session = await store.create({}, user_id="u1")
    assert await store.count_for_user("u1") == 1
    assert await store.destroy(session)
    assert await store.count_for_user("u1") == 0
    assert session.id is None


async def test_rotation_within_a_user_keeps_the_index(make_store: MakeStore) -> None:
    store = make_store()
    session = await store.create({"a": 1}, user_id="u1")
    await store.regenerate(session)
    assert session.user_id == "u1"
    assert await store.count_for_user("u1") == 1
    assert await store.destroy_all_for_user("u1") == 1


async def test_clear_ends_the_session_and_later_keys_start_a_new_one(
    make_store: MakeStore,
) -> None:
    store = make_store()
    session = await store.create({"a": 1}, user_id="u1")
    old_id = session.id
    assert old_id is not None
    session.clear()
    session["flash"] = "bye"
    await store.save(session)
    assert session.id not in (None, old_id)
    assert session.user_id is None
    assert await store.load(old_id) is None
    assert await store.count_for_user("u1") == 0


async def test_mapping_behaviour(make_store: MakeStore) -> None:
    session: Session = make_store().new({"a": 1})
    session.update(b=2)
    assert session.setdefault("c", 3) == 3
    assert session.pop("a") == 1
    assert session.pop("zz", None) is None
    assert sorted(session) == ["b", "c"]
    assert session == {"b": 2, "c": 3}
    assert len(session) == 2
    assert "b" in session
    assert dict(session.items()) == {"b": 2, "c": 3}
    with pytest.raises(TypeError):
        hash(session)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"secret_key": "short"},
        {"idle_timeout": 0},
        {"touch_interval": 900},
        {"max_bytes": 0},
        {"key_prefix": "bad{prefix}"},
    ],
)
def test_bad_configuration_is_rejected(make_store: MakeStore, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        make_store(**kwargs)


async def test_login_on_a_session_that_ended_starts_a_fresh_one(make_store: MakeStore) -> None:
    store = make_store()
    session = await store.create({"cart": [1]}, user_id="u1")
    old_id = session.id
    assert await store.destroy_all_for_user("u1") == 1  # e.g. a password change
    session.login("u1")
    await store.save(session)
    assert session.id not in (None, old_id)
    assert session.user_id == "u1"
    assert not session.ended
    assert await store.count_for_user("u1") == 1
    assert session.id is not None
    fresh = await store.load(session.id)
    assert fresh is not None
    assert dict(fresh) == {"cart": [1]}


async def test_many_concurrent_writers_lose_nothing(make_store: MakeStore) -> None:
    stores = [make_store() for _ in range(4)]
    created = await stores[0].create({})
    assert created.id is not None
    held = [await stores[i % 4].load(created.id) for i in range(20)]

    async def write(i: int) -> None:
        session = held[i]
        assert session is not None
        session[f"k{i}"] = i
        await stores[i % 4].save(session)

    await asyncio.gather(*(write(i) for i in range(20)))
    final = await stores[1].load(created.id)
    assert final is not None
    assert dict(final) == {f"k{i}": i for i in range(20)}
    assert final.version == 21


async def test_mutations_through_held_references_are_saved(make_store: MakeStore) -> None:
    store = make_store()
    created = await store.create({"cart": [1], "prefs": {"a": 1}, "name": "x"})
    assert created.id is not None
    session = await store.load(created.id)
    assert session is not None
    cart = session["cart"]
    prefs = session.get("prefs")
    assert session["name"] == "x"
    cart.append(2)
    await store.save(session)
    cart.append(3)  # still watched after a save
    prefs["b"] = 2
    await store.save(session)
    final = await store.load(created.id)
    assert final is not None
    assert dict(final) == {"cart": [1, 2, 3], "prefs": {"a": 1, "b": 2}, "name": "x"}
    assert final.version == 3


async def test_reading_scalars_and_iterating_keys_changes_nothing(make_store: MakeStore) -> None:
    store = make_store()
    created = await store.create({"n": 1, "s": "x", "cart": [1]})
    assert created.id is not None
    session = await store.load(created.id)
    assert session is not None
    assert session["n"] == 1
    assert sorted(session) == ["cart", "n", "s"]
    assert session.changes() == ({}, [])
    assert dict(session) == {"n": 1, "s": "x", "cart": [1]}  # reads the list: now watched
    assert session.changes() == ({}, [])
    assert not session.modified


def test_encryption_without_cryptography_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from scalekit.errors import MissingDependencyError
    from scalekit.sessions import MemorySessionBackend

    for name in [m for m in sys.modules if m == "cryptography" or m.startswith("cryptography.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "cryptography", None)  # as if it were not installed
    with pytest.raises(MissingDependencyError, match=r"scalekit\[crypto\]"):
        SessionStore(
            MemorySessionBackend(),
            secret_key="server-key-for-tests-0123456789abcdef",
            encryption_keys=["encryption-key-0123456789abcdef"],
        )
