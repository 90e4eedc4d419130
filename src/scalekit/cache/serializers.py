"""Serializers and the HMAC signer: how values become bytes on a shared server, and back.

Pickle is deliberately absent: anyone who can write to a shared Redis could otherwise run code
in every process that reads from it. The defaults are JSON (through :mod:`orjson` when it is
installed, the standard library otherwise) and, as an extra, MessagePack. When the server is
shared with code you do not control, wrap values with a :class:`Signer`: HMAC-SHA256 with a
fixed algorithm (never read from the stored bytes) and key rotation.

This module has no dependency on the rest of :mod:`scalekit.cache`, so other primitives (the
session store) reuse it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from scalekit._drivers import require
from scalekit.errors import ConfigurationError, SerializationError, SignatureError

__all__ = [
    "JsonSerializer",
    "MsgpackSerializer",
    "Serializer",
    "SignedSerializer",
    "Signer",
]


@runtime_checkable
class Serializer(Protocol):
    """Turns values into bytes and back.

    ``loads`` must raise :class:`~scalekit.errors.SerializationError` (never anything else) for
    bytes it cannot decode, so callers can count them as misses.
    """

    def dumps(self, value: Any) -> bytes:
        """Encode ``value``; raise :class:`~scalekit.errors.SerializationError` if impossible."""
        ...

    def loads(self, data: bytes) -> Any:
        """Decode ``data``; raise :class:`~scalekit.errors.SerializationError` if malformed."""
        ...


class JsonSerializer:
    """JSON through :mod:`orjson` when importable (several times faster), else :mod:`json`.

    Both produce and accept the same documents: UTF-8 JSON. ``orjson`` also encodes
    ``datetime``, ``UUID`` and dataclasses natively; the stdlib fallback does not, so pass
    ``default=`` for portable behaviour.

    Args:
        use_orjson: ``None`` (auto-detect), ``True`` (require it) or ``False`` (stdlib only).
        default: called for objects JSON cannot encode; returns an encodable replacement.
    """

    __slots__ = ("_default", "_dumps", "_loads", "uses_orjson")

    def __init__(self, *, use_orjson: bool | None = None, default: Any = None) -> None:
        orjson: Any = None
        if use_orjson is None:
            try:
                import orjson
            except ImportError:  # pragma: no cover - orjson is installed in CI
                orjson = None
        elif use_orjson:
            orjson = require("orjson")
        self._default = default
        self.uses_orjson = orjson is not None
        if orjson is not None:
            dumps_fn = orjson.dumps
            opts = orjson.OPT_NON_STR_KEYS
            self._dumps = lambda value: dumps_fn(value, default=default, option=opts)
            self._loads = orjson.loads
        else:
            encoder = json.JSONEncoder(
                separators=(",", ":"), ensure_ascii=False, default=default, allow_nan=False
            )
            self._dumps = lambda value: encoder.encode(value).encode("utf-8")
            self._loads = json.loads

    def dumps(self, value: Any) -> bytes:
        """Encode ``value`` as UTF-8 JSON.

        Raises:
            SerializationError: the value holds something JSON cannot represent.
        """
        try:
            return self._dumps(value)  # type: ignore[no-any-return,no-untyped-call]
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            raise SerializationError(
                f"cannot encode a {type(value).__name__} as JSON: {exc}. "
                "Store JSON-compatible data, or pass default= to convert it."
            ) from exc

    def loads(self, data: bytes) -> Any:
        """Decode UTF-8 JSON.

        Raises:
            SerializationError: the bytes are not valid UTF-8 JSON.
        """
        try:
            return self._loads(data)
        except (ValueError, TypeError, RecursionError) as exc:  # JSONDecodeError is a ValueError
            raise SerializationError(f"stored bytes are not valid JSON: {exc}") from exc

    def __repr__(self) -> str:
        return f"JsonSerializer(orjson={self.uses_orjson})"


class MsgpackSerializer:
    """MessagePack (``pip install "scalekit[msgpack]"``): compact and fast for binary data.

    Raw ``bytes`` values survive the round trip (JSON cannot store them). Extension types are
    refused on decode, so stored data cannot make the decoder build arbitrary objects.

    Args:
        max_buffer_size: refuse to decode documents larger than this many bytes.
    """

    __slots__ = ("_max", "_msgpack")

    def __init__(self, *, max_buffer_size: int = 64 * 1024 * 1024) -> None:
        self._msgpack: Any = require("msgpack")
        self._max = max_buffer_size

    def dumps(self, value: Any) -> bytes:
        """Encode ``value`` as MessagePack.

        Raises:
            SerializationError: the value holds a type MessagePack cannot represent.
        """
        try:
            return self._msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]
        except (TypeError, ValueError, OverflowError) as exc:
            raise SerializationError(
                f"cannot encode a {type(value).__name__} as MessagePack: {exc}"
            ) from exc

    def loads(self, data: bytes) -> Any:
        """Decode MessagePack.

        Raises:
            SerializationError: the bytes are not one valid MessagePack document.
        """
        if len(data) > self._max:
            raise SerializationError(
                f"stored MessagePack document is {len(data)} bytes, over max_buffer_size"
            )
        try:
            return self._msgpack.unpackb(
                data, raw=False, strict_map_key=False, ext_hook=_refuse_ext
            )
        except SerializationError:
            raise
        except Exception as exc:  # msgpack raises many unrelated types for garbage
            raise SerializationError(f"stored bytes are not valid MessagePack: {exc}") from exc

    def __repr__(self) -> str:
        return "MsgpackSerializer()"


def _refuse_ext(code: int, data: bytes) -> Any:
    raise SerializationError(f"MessagePack extension type {code} is not accepted")


_FORMAT = b"\x01"  # layout version: 1 byte, key id: 4 bytes, HMAC-SHA256: 32 bytes, payload
_KID = 4
_MAC = 32
_HEADER = 1 + _KID + _MAC


class Signer:
    """HMAC-SHA256 signatures with key rotation, to refuse values this application did not write.

    The first key signs; every key verifies. To rotate, put the new key first and keep the old
    one until every value it signed has expired, then drop it. The algorithm is fixed (SHA-256);
    nothing in the stored bytes can choose it. Each signature names its key by a 4-byte
    fingerprint, so verification costs one HMAC however many keys are configured.

    Args:
        keys: secret keys, newest first; each at least 16 bytes (``str`` is UTF-8 encoded).

    Raises:
        ConfigurationError: no key, a key shorter than 16 bytes, or two keys with one fingerprint.
    """

    __slots__ = ("_by_kid", "_sign_key", "_sign_kid")

    overhead: int = _HEADER
    """Bytes a signature adds to a value."""

    def __init__(self, keys: Sequence[bytes | str]) -> None:
        if isinstance(keys, (bytes, str)):
            raise ConfigurationError("Signer(keys=...) takes a list of keys, newest first")
        encoded = [k.encode() if isinstance(k, str) else bytes(k) for k in keys]
        if not encoded:
            raise ConfigurationError("Signer needs at least one key (newest first)")
        self._by_kid: dict[bytes, bytes] = {}
        for key in encoded:
            if len(key) < 16:
                raise ConfigurationError(
                    "a signing key must be at least 16 bytes; use secrets.token_bytes(32)"
                )
            kid = hashlib.sha256(b"scalekit-kid" + key).digest()[:_KID]
            if kid in self._by_kid and self._by_kid[kid] != key:  # pragma: no cover - 2**-32
                raise ConfigurationError("two signing keys share a fingerprint; replace one")
            self._by_kid[kid] = key
        self._sign_key = encoded[0]
        self._sign_kid = hashlib.sha256(b"scalekit-kid" + self._sign_key).digest()[:_KID]

    def sign(self, payload: bytes) -> bytes:
        """Return ``payload`` prefixed with its signature under the newest key."""
        mac = hmac.digest(self._sign_key, payload, "sha256")
        return b"".join((_FORMAT, self._sign_kid, mac, payload))

    def verify(self, data: bytes) -> bytes:
        """Return the payload of ``data`` if its signature verifies with a configured key.

        Raises:
            SignatureError: the bytes are unsigned, truncated, signed with an unknown key, or
                tampered with.
        """
        if len(data) < _HEADER or data[:1] != _FORMAT:
            raise SignatureError(
                "stored value is not signed by scalekit (or has an unknown layout): refused"
            )
        key = self._by_kid.get(bytes(data[1 : 1 + _KID]))
        if key is None:
            raise SignatureError(
                "stored value is signed with a key this process does not have: refused. "
                "Keep retired keys in Signer(keys=[new, old]) until their values expire."
            )
        payload = data[_HEADER:]
        expected = hmac.digest(key, payload, "sha256")
        if not hmac.compare_digest(expected, data[1 + _KID : _HEADER]):
            raise SignatureError("stored value failed HMAC verification (tampered?): refused")
        return bytes(payload)

    def __repr__(self) -> str:
        return f"Signer(keys=<{len(self._by_kid)} hidden>)"


class SignedSerializer:
    """A serializer whose output is signed, for stores shared with code you do not trust.

    Args:
        inner: the serializer that turns values into bytes.
        signer: the :class:`Signer` holding the keys.
    """

    __slots__ = ("inner", "signer")

    def __init__(self, inner: Serializer, signer: Signer) -> None:
        self.inner = inner
        self.signer = signer

    def dumps(self, value: Any) -> bytes:
        """Encode with ``inner`` and sign.

        Raises:
            SerializationError: ``inner`` cannot encode the value.
        """
        return self.signer.sign(self.inner.dumps(value))

    def loads(self, data: bytes) -> Any:
        """Verify, then decode with ``inner``.

        Raises:
            SignatureError: the signature does not verify.
            SerializationError: the signed payload cannot be decoded.
        """
        return self.inner.loads(self.signer.verify(data))

    def __repr__(self) -> str:
        return f"SignedSerializer({self.inner!r}, {self.signer!r})"
