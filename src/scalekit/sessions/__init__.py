"""Server-side sessions in Redis with ASGI and aiohttp middleware, so app instances stay stateless.

::

    from scalekit.sessions import RedisSessionBackend, SessionMiddleware, SessionStore

    store = SessionStore(RedisSessionBackend(redis_client), secret_key=SERVER_KEY)
    app.add_middleware(SessionMiddleware, store=store, secret_keys=[COOKIE_KEY])

Importing this package imports neither redis nor aiohttp.
"""

from __future__ import annotations

from scalekit.sessions.asgi import SessionMiddleware, load_session
from scalekit.sessions.backend import SessionBackend
from scalekit.sessions.memory import MemorySessionBackend
from scalekit.sessions.redis import RedisSessionBackend
from scalekit.sessions.store import Session, SessionStore

__all__ = [
    "MemorySessionBackend",
    "RedisSessionBackend",
    "Session",
    "SessionBackend",
    "SessionMiddleware",
    "SessionStore",
    "load_session",
]
