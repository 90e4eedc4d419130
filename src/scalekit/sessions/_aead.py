"""Encryption of session values at rest: AES-256-GCM per value, keys rotated by id.

Private: :class:`~scalekit.sessions.SessionStore` seals each encoded value before it reaches the
backend and opens it after a load, so Redis (its dumps, backups, replicas, ``MONITOR``) never
holds session data in clear.

A sealed value is ``"e1." + base64url(key id (4) | salt (16) | ciphertext | tag (16))``:

* every value is encrypted under its own subkey, ``BLAKE2b(salt, key=master)``, with a random
  128-bit salt, so the fixed GCM nonce is never reused and no key reaches GCM's limit of
  2**32 random-nonce messages, however many values a busy service writes;
* the value's field name is the associated data: a value moved to another field (or a
  ciphertext from another field) fails to open;
* the key id picks the key among ``encryption_keys``: the first encrypts, all decrypt, so keys
  rotate without logging anyone out.

What it does not do: bind a value to one session. Whoever can write to Redis can already copy a
whole session under their own id; encryption keeps data confidential and per-field intact, and
the session's authenticity still rests on its HMAC-keyed id.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping, Sequence
from hashlib import blake2b
from typing import Any

from scalekit._drivers import require
from scalekit.errors import ConfigurationError
from scalekit.sessions._crypto import as_key_bytes

__all__ = ["FieldCipher"]

_PREFIX = "e1."
_KID = 4
_SALT = 16
_NONCE = bytes(12)  # fixed: every subkey encrypts exactly one value
_AAD = b"scalekit-session-value:"


class FieldCipher:
    """Seal and open session values with the first of ``keys`` (any of them opens).

    Raises:
        ConfigurationError: no key, a key shorter than 16 bytes, or two equal keys.
        MissingDependencyError: ``cryptography`` is not installed (``scalekit[crypto]``).
    """

    __slots__ = ("_aesgcm", "_keys", "_sealing")

    def __init__(self, keys: Sequence[str | bytes]) -> None:
        if isinstance(keys, (str, bytes)) or not keys:
            raise ConfigurationError(
                "encryption_keys must be a non-empty list of keys (the first one encrypts)"
            )
        aead: Any = require("cryptography.hazmat.primitives.ciphers.aead", "crypto")
        self._aesgcm = aead.AESGCM
        self._keys: dict[bytes, bytes] = {}
        for key in keys:
            raw = as_key_bytes(key, "each encryption key")
            kid = blake2b(raw, digest_size=_KID, person=b"sk-sess-kid").digest()
            if kid in self._keys:
                raise ConfigurationError("encryption_keys holds the same key twice")
            self._keys[kid] = blake2b(raw, digest_size=32, person=b"sk-sess-aead").digest()
        self._sealing = next(iter(self._keys))

    def _cipher(self, master: bytes, salt: bytes) -> Any:
        return self._aesgcm(blake2b(salt, key=master, digest_size=32).digest())

    def seal(self, name: str, text: str) -> str:
        """The stored form of the encoded value ``text`` of session key ``name``."""
        salt = os.urandom(_SALT)
        cipher = self._cipher(self._keys[self._sealing], salt)
        sealed = cipher.encrypt(_NONCE, text.encode(), _AAD + name.encode())
        body = base64.urlsafe_b64encode(self._sealing + salt + sealed).rstrip(b"=")
        return _PREFIX + body.decode()

    def open(self, name: str, stored: str) -> str:
        """The encoded value sealed in ``stored``; a value stored in clear is returned as it is
        (written before encryption was turned on: it is encrypted at its next change).

        Raises:
            ValueError: the value was sealed under an unknown key, for another field, or was
                altered.
        """
        if not stored.startswith(_PREFIX):
            return stored
        try:
            body = stored[len(_PREFIX) :]
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError):
            raise ValueError("a sealed session value is not valid base64") from None
        master = self._keys.get(raw[:_KID])
        if master is None or len(raw) < _KID + _SALT + 16:
            raise ValueError("a session value is sealed under a key that is not configured")
        cipher = self._cipher(master, raw[_KID : _KID + _SALT])
        try:
            plain: bytes = cipher.decrypt(_NONCE, raw[_KID + _SALT :], _AAD + name.encode())
        except Exception:  # cryptography's InvalidTag
            raise ValueError("a session value failed authentication (altered or moved)") from None
        return plain.decode()

    def seal_all(self, fields: Mapping[str, str]) -> dict[str, str]:
        """:meth:`seal` every ``name -> text``."""
        return {name: self.seal(name, text) for name, text in fields.items()}

    def open_all(self, fields: Mapping[str, str]) -> dict[str, str]:
        """:meth:`open` every ``name -> stored``.

        Raises:
            ValueError: the first value that does not open.
        """
        return {name: self.open(name, stored) for name, stored in fields.items()}

    def __repr__(self) -> str:
        return f"FieldCipher(keys={len(self._keys)})"
