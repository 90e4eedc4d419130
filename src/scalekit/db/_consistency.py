"""Read-your-writes bookkeeping: the per-context scope holding a WAL position, and its token."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
from collections.abc import Sequence
from contextvars import ContextVar, Token
from types import TracebackType

from scalekit.errors import ConfigurationError, InvalidConsistencyTokenError

__all__ = ["ConsistencyScope", "TokenCodec"]

_VERSION = 1
_MAC_BYTES = 16
_PAYLOAD = struct.Struct(">BQ")  # version, LSN
_TOKEN_LEN = 34  # base64url of 1 + 8 + 16 bytes, without padding
_DOMAIN = b"scalekit.db.consistency.v1\x00"


class _Scope:
    """A mutable box shared by every task of one consistency scope (one request, one job)."""

    __slots__ = ("lsn",)

    def __init__(self, lsn: int = 0) -> None:
        self.lsn = lsn


class TokenCodec:
    """Signs and verifies consistency tokens: an LSN with a truncated HMAC-SHA256.

    Args:
        secrets: the signing secret first, then older secrets still accepted (key rotation).
            ``None`` makes a random secret, valid only inside this process.
    """

    __slots__ = ("_keys",)

    def __init__(self, secrets: str | bytes | Sequence[str | bytes] | None) -> None:
        if secrets is None:
            keys = [os.urandom(32)]
        elif isinstance(secrets, (str, bytes)):
            keys = [_key(secrets)]
        else:
            keys = [_key(s) for s in secrets]
        if not keys:
            raise ConfigurationError("token_secret needs at least one secret")
        self._keys = keys

    def encode(self, lsn: int) -> str:
        """The token for ``lsn``."""
        payload = _PAYLOAD.pack(_VERSION, lsn)
        mac = hmac.new(self._keys[0], _DOMAIN + payload, hashlib.sha256).digest()[:_MAC_BYTES]
        return _b64(payload + mac)

    def decode(self, token: object) -> int:
        """The LSN inside ``token``.

        Raises:
            InvalidConsistencyTokenError: not a string, malformed, or not signed by a known secret.
        """
        if not isinstance(token, str):
            raise InvalidConsistencyTokenError(
                f"a consistency token is a str, got {type(token).__name__}; pass the string "
                "that db.consistency_token() returned"
            )
        if len(token) != _TOKEN_LEN:
            raise InvalidConsistencyTokenError(
                f"malformed consistency token ({len(token)} characters, expected {_TOKEN_LEN}); "
                "pass the string that db.consistency_token() returned, unmodified"
            )
        try:
            raw = base64.b64decode(token + "==", altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        # the canonical check also rejects the spare bits of the last character being changed
        if len(raw) != _PAYLOAD.size + _MAC_BYTES or _b64(raw) != token:
            raise InvalidConsistencyTokenError(
                "malformed consistency token (not base64url); pass the string that "
                "db.consistency_token() returned, unmodified"
            )
        payload, mac = raw[: _PAYLOAD.size], raw[_PAYLOAD.size :]
        version, lsn = _PAYLOAD.unpack(payload)
        if version != _VERSION or len(mac) != _MAC_BYTES:
            raise InvalidConsistencyTokenError(
                f"unsupported consistency token version {version}; upgrade scalekit everywhere"
            )
        for key in self._keys:
            expected = hmac.new(key, _DOMAIN + payload, hashlib.sha256).digest()[:_MAC_BYTES]
            if hmac.compare_digest(mac, expected):
                return int(lsn)
        raise InvalidConsistencyTokenError(
            "consistency token signature does not verify: it was altered, or signed with another "
            "token_secret (give every Database that shares tokens the same token_secret)"
        )


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _key(secret: str | bytes) -> bytes:
    key = secret.encode() if isinstance(secret, str) else secret
    if not isinstance(key, bytes) or len(key) < 16:
        raise ConfigurationError("a token_secret must be at least 16 bytes (use 32 random bytes)")
    return key


class ConsistencyScope:
    """``async with``: run the block in its own read-your-writes scope, seeded with an LSN.

    Obtained from :meth:`scalekit.db.Database.consistent_with` or
    :meth:`scalekit.db.Database.consistency_scope`; the previous scope is restored on exit.
    """

    __slots__ = ("_lsn", "_reset", "_var")

    def __init__(self, var: ContextVar[_Scope | None], lsn: int) -> None:
        self._var = var
        self._lsn = lsn
        self._reset: Token[_Scope | None] | None = None

    @property
    def lsn(self) -> int:
        """The WAL position reads in this scope must see (grows with the scope's writes)."""
        scope = self._var.get()
        return scope.lsn if scope is not None and self._reset is not None else self._lsn

    async def __aenter__(self) -> ConsistencyScope:
        self._reset = self._var.set(_Scope(self._lsn))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._reset is not None:
            scope = self._var.get()
            if scope is not None:
                self._lsn = scope.lsn
            self._var.reset(self._reset)
            self._reset = None
