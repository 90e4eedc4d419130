"""Session values encrypted at rest, on the memory backend, real Redis and the Redis Cluster."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

if os.environ.get("SCALEKIT_NO_EXTRAS") == "1":  # elsewhere a missing extra must fail, not skip
    pytest.importorskip("cryptography", reason="the no-extras run has no scalekit[crypto]")

from scalekit.errors import ConfigurationError, SessionTooLargeError
from scalekit.sessions import SessionStore
from scalekit.sessions.backend import Limits, SessionBackend, WriteResult
from scalekit.testing import ManualClock
from tests.sessions.conftest import SERVER_KEY, SpyBackend

NEW_KEY = "encryption-key-new-0123456789abcdef"
OLD_KEY = "encryption-key-old-0123456789abcdef"


class RecordingBackend(SpyBackend):
    """Keeps every value written, as the backend received it; may swap two of them."""

    def __init__(self, inner: SessionBackend) -> None:
        super().__init__(inner)
        self.written: list[str] = []
        self.swap: tuple[str, str] | None = None

    def _record(self, fields: Mapping[str, str]) -> dict[str, str]:
        fields = dict(fields)
        self.written += fields.values()
        if self.swap is not None:
            a, b = self.swap
            fields[a], fields[b] = fields[b], fields[a]
        return fields

    async def create(
        self,
        key: str,
        fields: Mapping[str, str],
        limits: Limits,
        *,
        user_id: str | None = None,
        index_key: str | None = None,
    ) -> WriteResult:
        fields = self._record(fields)
        return await super().create(key, fields, limits, user_id=user_id, index_key=index_key)

    async def merge(
        self, key: str, set_fields: Mapping[str, str], delete_fields: Sequence[str], limits: Limits
    ) -> WriteResult:
        set_fields = self._record(set_fields)
        return await super().merge(key, set_fields, delete_fields, limits)


@pytest.fixture
def recording(backend: SessionBackend) -> RecordingBackend:
    return RecordingBackend(backend)


@pytest.fixture
def make(recording: RecordingBackend, unique: str, clock: ManualClock) -> Any:
    def make(keys: Sequence[str] | None = (NEW_KEY,), **kwargs: Any) -> SessionStore:
        return SessionStore(
            recording,
            secret_key=SERVER_KEY,
            key_prefix=f"{unique}:",
            clock=clock,
            encryption_keys=None if keys is None else list(keys),
            **kwargs,
        )

    return make


async def test_values_are_stored_encrypted_and_read_back(
    make: Any, recording: RecordingBackend
) -> None:
    created = await make().create({"name": "ada@lovelace", "cart": [17, 42]})
    assert created.id is not None
    assert recording.written
    assert all(value.startswith("e1.") for value in recording.written)
    # '@', '[' and ',' are not in the base64url alphabet: any of them would be plaintext
    # (a bare "42" would not do: it turns up in random base64 about once in 50 values)
    assert not any(c in value for value in recording.written for c in "@[,")
    loaded = await make().load(created.id)  # another app instance with the same key
    assert loaded is not None
    assert dict(loaded) == {"name": "ada@lovelace", "cart": [17, 42]}
    loaded["cart"] = [17, 42, 99]
    await make().save(loaded)
    again = await make().load(created.id)
    assert again is not None
    assert again["cart"] == [17, 42, 99]


async def test_keys_rotate_without_logging_anyone_out(make: Any) -> None:
    created = await make([OLD_KEY]).create({"name": "ada", "cart": [1]})
    assert created.id is not None
    rotated = make([NEW_KEY, OLD_KEY])  # the new key in front: it encrypts, both decrypt
    session = await rotated.load(created.id)
    assert session is not None
    session["cart"] = [1, 2]  # re-encrypted under the new key
    await rotated.save(session)
    reloaded = await rotated.load(created.id)
    assert reloaded is not None
    assert dict(reloaded) == {"name": "ada", "cart": [1, 2]}
    # "name" is still under the old key: dropping it too early loses the session, loudly
    assert await make([NEW_KEY]).load(created.id) is None


async def test_a_value_moved_to_another_field_does_not_open(
    make: Any, recording: RecordingBackend, caplog: pytest.LogCaptureFixture
) -> None:
    recording.swap = ("role", "name")  # someone with write access to Redis swaps two values
    created = await make().create({"role": "user", "name": "admin"})
    assert created.id is not None
    recording.swap = None
    with caplog.at_level(logging.ERROR, logger="scalekit.sessions"):
        assert await make().load(created.id) is None  # never silently {} or swapped
    assert "does not decrypt" in caplog.text


async def test_a_foreign_key_cannot_read_and_the_session_is_not_overwritten(make: Any) -> None:
    created = await make().create({"name": "ada"})
    assert created.id is not None
    assert await make([OLD_KEY]).load(created.id) is None
    assert await make().load(created.id) is not None  # still there for the right key


async def test_sessions_stored_in_clear_are_read_then_encrypted_as_they_change(
    make: Any, recording: RecordingBackend
) -> None:
    created = await make(None).create({"name": "ada", "cart": [1]})
    assert created.id is not None
    assert not any(value.startswith("e1.") for value in recording.written)
    encrypted = make()
    session = await encrypted.load(created.id)
    assert session is not None
    assert dict(session) == {"name": "ada", "cart": [1]}
    recording.written.clear()
    session["cart"] = [1, 2]
    await encrypted.save(session)
    assert len(recording.written) == 1
    assert recording.written[0].startswith("e1.")
    reloaded = await encrypted.load(created.id)
    assert reloaded is not None
    assert dict(reloaded) == {"name": "ada", "cart": [1, 2]}


async def test_regenerating_and_binding_a_user_keep_encrypted_data(make: Any) -> None:
    store = make()
    anon = await store.create({"cart": [3]})
    assert anon.id is not None
    await store.regenerate(anon, user_id="ada")  # a login: new id, maybe a new cluster slot
    assert anon.id is not None
    loaded = await store.load(anon.id)
    assert loaded is not None
    assert loaded["cart"] == [3]


async def test_max_bytes_counts_the_encrypted_size(make: Any) -> None:
    text = "x" * 900  # fits in 1,000 bytes in clear, not once encrypted and encoded
    await make(None, max_bytes=1000).create({"v": text})
    with pytest.raises(SessionTooLargeError):
        await make(max_bytes=1000).create({"v": text})


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ([], "non-empty list"),
        ("a-single-key-as-a-str-0123456789", "non-empty list"),
        (["short"], "16"),
        ([NEW_KEY, NEW_KEY], "twice"),
    ],
)
def test_bad_encryption_keys_are_refused(backend: SessionBackend, keys: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        SessionStore(backend, secret_key=SERVER_KEY, encryption_keys=keys)
