# requires: redis
"""Encrypt session values at rest, then rotate the encryption key without logging anyone out."""

import asyncio
import os

import redis.asyncio as redis

from scalekit.sessions import RedisSessionBackend, SessionStore

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("SCALEKIT_EXAMPLE_PREFIX", "example") + ":sessions:"
SERVER_KEY = os.environ.get("SESSION_SERVER_KEY", "dev-only-server-key-change-me-0123456789")
# 16+ random bytes each, from your secret store; the first one encrypts, every one decrypts.
KEY_2025 = os.environ.get("SESSION_DATA_KEY_2025", "dev-only-data-key-2025-0123456789abcd")
KEY_2026 = os.environ.get("SESSION_DATA_KEY_2026", "dev-only-data-key-2026-0123456789abcd")


def store(client: redis.Redis, keys: list[str]) -> SessionStore:
    backend = RedisSessionBackend(client)
    return SessionStore(backend, secret_key=SERVER_KEY, key_prefix=PREFIX, encryption_keys=keys)


async def main() -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        session = await store(client, [KEY_2025]).create({"email": "ada@example.org"})
        assert session.id is not None

        # What Redis (its dumps, backups and replicas) holds: no email, no session id.
        stored = [await client.hvals(key) async for key in client.scan_iter(match=PREFIX + "*")]
        assert stored
        assert not any(b"ada@example.org" in value for values in stored for value in values)

        # Rotation: deploy the new key in front. Old values still open; changed ones move to
        # the new key. Drop the old key once absolute_lifetime has passed since the switch.
        rotated = store(client, [KEY_2026, KEY_2025])
        loaded = await rotated.load(session.id)
        assert loaded is not None
        assert loaded["email"] == "ada@example.org"
        loaded["theme"] = "dark"
        await rotated.save(loaded)
    finally:
        async for key in client.scan_iter(match=PREFIX + "*"):
            await client.delete(key)
        await client.aclose()


if __name__ == "__main__":
    asyncio.run(main())
