"""MemorySessionBackend specifics (its shared semantics are tested in test_store.py)."""

from __future__ import annotations

from scalekit.sessions import MemorySessionBackend, SessionStore
from scalekit.testing import ManualClock
from tests.sessions.conftest import SERVER_KEY


async def test_expired_sessions_are_swept_from_memory() -> None:
    clock = ManualClock()
    backend = MemorySessionBackend()
    store = SessionStore(backend, secret_key=SERVER_KEY, idle_timeout=60, clock=clock)
    for i in range(300):
        await store.create({"i": i})
    assert len(backend) == 300
    await clock.advance(61)
    for i in range(300):  # creating sessions later sweeps the expired ones
        await store.create({"i": i})
    assert len(backend) < 300 + 256


async def test_stores_sharing_a_backend_see_each_others_sessions() -> None:
    backend = MemorySessionBackend()
    a = SessionStore(backend, secret_key=SERVER_KEY)
    b = SessionStore(backend, secret_key=SERVER_KEY)
    session = await a.create({"x": 1}, user_id="u")
    assert session.id is not None
    assert await b.load(session.id) is not None
    assert await b.destroy_all_for_user("u") == 1
    assert "sessions=0" in repr(backend)
