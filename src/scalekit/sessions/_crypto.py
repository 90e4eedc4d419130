"""Session ids, keyed hashing of ids and user ids, and HMAC cookie signatures with key rotation.

Private: a small, self-contained HMAC toolkit so sessions do not depend on another primitive.

A session id is ``<tag>.<token>``: ``token`` is 256 bits from :mod:`secrets`; ``tag`` is 4 hex
digits that pick the Redis Cluster slot of the session's keys. An anonymous session gets a random
tag; a session bound to a user gets the user's tag (derived from a keyed hash of the user id), so
the session and the user's index share a slot and one Lua script can update both. Redis stores a
session under HMAC(server key, id), never under the id itself: a dump of Redis holds no usable id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from typing import Any

from scalekit.errors import ConfigurationError

__all__ = ["CookieSigner", "KeySpace", "as_key_bytes"]

_MIN_KEY_BYTES = 16
_ID_RE = re.compile(r"[0-9a-f]{4}\.[A-Za-z0-9_-]{43}")
_COOKIE_RE = re.compile(r"[0-9a-f]{4}\.[A-Za-z0-9_-]{43}\.[A-Za-z0-9_-]{43}")
ID_LENGTH = 48  # 4 + 1 + 43
_SIG_LENGTH = 43  # base64url of 32 bytes, unpadded


def as_key_bytes(key: str | bytes, what: str) -> bytes:
    """Validate a secret key and return its bytes."""
    if isinstance(key, str):
        key = key.encode()
    if not isinstance(key, bytes):
        raise ConfigurationError(f"{what} must be str or bytes, got {type(key).__name__}")
    if len(key) < _MIN_KEY_BYTES:
        raise ConfigurationError(
            f"{what} is {len(key)} bytes; use at least {_MIN_KEY_BYTES} random bytes "
            "(for example secrets.token_urlsafe(32)), kept out of the source code"
        )
    return key


def _derive(key: bytes, purpose: bytes) -> bytes:
    return hmac.new(key, b"scalekit.sessions/" + purpose, hashlib.sha256).digest()


class KeySpace:
    """Issues session ids and maps ids and user ids to Redis key names."""

    __slots__ = ("_id_key", "_id_mac", "_prefix", "_user_key")

    def __init__(self, secret_key: str | bytes, prefix: str) -> None:
        raw = as_key_bytes(secret_key, "secret_key")
        if "{" in prefix or "}" in prefix:
            raise ConfigurationError(
                f"key_prefix {prefix!r} must not contain '{{' or '}}': scalekit adds its own "
                "Redis Cluster hash tag after the prefix"
            )
        self._prefix = prefix
        self._id_key = _derive(raw, b"id")
        self._id_mac = hmac.new(self._id_key, digestmod=hashlib.sha256)
        self._user_key = _derive(raw, b"user")

    @staticmethod
    def is_valid_id(session_id: object) -> bool:
        """Whether ``session_id`` has the shape of an id this module issues."""
        return (
            isinstance(session_id, str)
            and len(session_id) == ID_LENGTH
            and _ID_RE.fullmatch(session_id) is not None
        )

    def new_id(self, tag: str | None = None) -> str:
        """A fresh id; ``tag`` keeps it in a given cluster slot (random when omitted)."""
        return f"{tag or secrets.token_hex(2)}.{secrets.token_urlsafe(32)}"

    def session_key(self, session_id: str) -> str:
        """The Redis key of a session: ``<prefix>{<tag>}:s:<HMAC(id)>``."""
        mac = self._id_mac.copy()  # copying the keyed state skips re-deriving the key pads
        mac.update(session_id.encode())
        return f"{self._prefix}{{{session_id[:4]}}}:s:{mac.hexdigest()}"

    def user_tag(self, user_id: str) -> str:
        """The 4-hex-digit slot tag of a user's sessions and index."""
        return self._user_digest(user_id)[:4]

    def index_key(self, user_id: str) -> str:
        """The Redis key of a user's session index: ``<prefix>{<tag>}:u:<HMAC(user)>``."""
        digest = self._user_digest(user_id)
        return f"{self._prefix}{{{digest[:4]}}}:u:{digest}"

    def _user_digest(self, user_id: str) -> str:
        return hmac.new(self._user_key, user_id.encode(), hashlib.sha256).hexdigest()


class CookieSigner:
    """Signs session ids for cookies with the first key; verifies with every key (rotation).

    Args:
        secret_keys: newest first. The first key signs; all keys verify, so a key can be retired
            by moving it down the list, then dropped once cookies signed with it expired.
    """

    __slots__ = ("_keys",)

    def __init__(self, secret_keys: Sequence[str | bytes]) -> None:
        if isinstance(secret_keys, (str, bytes)) or not secret_keys:
            raise ConfigurationError(
                "secret_keys must be a non-empty list of keys, newest first (the first signs, "
                "all verify)"
            )
        self._keys = tuple(
            hmac.new(_derive(as_key_bytes(k, f"secret_keys[{i}]"), b"cookie"), None, "sha256")
            for i, k in enumerate(secret_keys)
        )

    def _sig(self, key: Any, session_id: str) -> str:
        mac = key.copy()
        mac.update(session_id.encode())
        return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()

    def sign(self, session_id: str) -> str:
        """``<id>.<signature>`` signed with the newest key."""
        return f"{session_id}.{self._sig(self._keys[0], session_id)}"

    def unsign(self, value: str) -> tuple[str, bool] | None:
        """Verify a cookie value.

        Returns:
            ``(session_id, signed_with_newest_key)``, or ``None`` when the value is malformed,
            oversized or carries no valid signature. Costs no I/O.
        """
        if len(value) != ID_LENGTH + 1 + _SIG_LENGTH or _COOKIE_RE.fullmatch(value) is None:
            return None
        session_id, sig = value[:ID_LENGTH], value[ID_LENGTH + 1 :]
        for i, key in enumerate(self._keys):
            if hmac.compare_digest(sig, self._sig(key, session_id)):
                return session_id, i == 0
        return None
