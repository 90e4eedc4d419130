"""Ids, keyed hashing and cookie signatures: pure logic, no server."""

from __future__ import annotations

import pytest

from scalekit.errors import ConfigurationError
from scalekit.sessions._crypto import CookieSigner, KeySpace

KEY = "k" * 32


def test_redis_keys_never_contain_the_session_id() -> None:
    keys = KeySpace(KEY, "app:")
    session_id = keys.new_id()
    redis_key = keys.session_key(session_id)
    assert session_id.split(".")[1] not in redis_key
    assert redis_key.startswith(f"app:{{{session_id[:4]}}}:s:")


def test_user_sessions_share_the_index_slot_tag() -> None:
    keys = KeySpace(KEY, "app:")
    tag = keys.user_tag("alice")
    assert keys.index_key("alice").startswith(f"app:{{{tag}}}:u:")
    assert keys.session_key(keys.new_id(tag)).startswith(f"app:{{{tag}}}:s:")
    assert "alice" not in keys.index_key("alice")


def test_id_shape_validation() -> None:
    keys = KeySpace(KEY, "")
    assert keys.is_valid_id(keys.new_id())
    for bad in ["", "x" * 48, "ABCD." + "a" * 43, "abcd." + "a" * 42, None, 7, "abcd." + "!" * 43]:
        assert not keys.is_valid_id(bad)


def test_sign_and_verify() -> None:
    signer = CookieSigner([KEY])
    session_id = KeySpace(KEY, "").new_id()
    assert signer.unsign(signer.sign(session_id)) == (session_id, True)


def test_tampered_values_fail() -> None:
    signer = CookieSigner([KEY])
    session_id = KeySpace(KEY, "").new_id()
    value = signer.sign(session_id)
    flipped = value[:10] + ("A" if value[10] != "A" else "B") + value[11:]
    assert signer.unsign(flipped) is None
    assert signer.unsign(value[:-1] + ("A" if value[-1] != "A" else "B")) is None
    assert signer.unsign(value + "x") is None
    assert signer.unsign(value[:-1]) is None
    assert signer.unsign("é" * len(value)) is None
    assert signer.unsign("") is None
    assert CookieSigner(["z" * 32]).unsign(value) is None


def test_key_rotation_newest_signs_all_verify() -> None:
    old = CookieSigner(["old-key-0123456789abcdef"])
    rotated = CookieSigner(["new-key-0123456789abcdef", "old-key-0123456789abcdef"])
    session_id = KeySpace(KEY, "").new_id()
    assert rotated.unsign(old.sign(session_id)) == (session_id, False)
    assert rotated.sign(session_id) != old.sign(session_id)
    assert rotated.unsign(rotated.sign(session_id)) == (session_id, True)
    # the signature comes from the FIRST key (Flask CVE-2025-47278 signed with the last one)
    assert CookieSigner(["new-key-0123456789abcdef"]).unsign(rotated.sign(session_id)) is not None


@pytest.mark.parametrize("keys", [[], "a-single-string-key-0123456789", ["short"], [b"x" * 8]])
def test_bad_keys_are_rejected(keys: object) -> None:
    with pytest.raises(ConfigurationError):
        CookieSigner(keys)  # type: ignore[arg-type]
