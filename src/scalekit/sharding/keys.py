"""Stable shard-key hashing: the same key gives the same 64-bit value in every process.

Python's ``hash()`` is salted per process (``PYTHONHASHSEED``), so it must never decide where
data lives. scalekit hashes keys with a fixed, documented function instead, so another service
(in Python or any other language) can compute the same placement:

* ``str`` keys are hashed as their UTF-8 bytes, so ``"acme"`` and ``b"acme"`` route together.
* ``bytes``/``bytearray``/``memoryview``: ``blake2b(data, digest_size=8)`` read little-endian.
* ``int`` in ``[0, 2**64)``: the splitmix64 finalizer (no digest: about 3x cheaper). Other ints
  are hashed as ``b"\\x01i" + signed little-endian bytes`` with blake2b.
* ``uuid.UUID``: ``blake2b`` of its 16 bytes (no hash-tag scan: a UUID has no tag).
* ``tuple`` (compound key): every element encoded with a type tag and a length, then blake2b.
* A **hash tag** routes a key by part of it, as Redis Cluster does: when a ``str``/``bytes`` key
  contains ``{...}`` with at least one character between the first ``{`` and the next ``}``,
  only that part is hashed, so ``"{acme}:order:17"`` and ``"{acme}:invoice:3"`` share a shard.

Anything else (``float``, ``bool``, ``None``, objects) raises
:class:`~scalekit.errors.InvalidShardKeyError`: ``1.0 == 1`` and ``True == 1`` in Python, and a
placement must not depend on which of the equal values a caller happened to pass.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from hashlib import blake2b
from typing import Any

from scalekit._accel import speedups
from scalekit.errors import InvalidShardKeyError

__all__ = [
    "MAX_KEY_BYTES",
    "ShardKey",
    "directory_key",
    "hash_tag",
    "key_bytes",
    "key_hash",
    "mix64",
]

#: A value accepted as a shard key.
ShardKey = int | str | bytes | bytearray | memoryview | uuid.UUID | tuple[Any, ...]

#: Keys whose canonical encoding is longer than this are refused (a key that large is a bug).
MAX_KEY_BYTES = 65536

_MASK = 0xFFFFFFFFFFFFFFFF
_FB = int.from_bytes
# blake2b(data, digest_size=8) is a copy of this empty state fed with data: copying a state
# costs a third less than creating one (parameter block, argument parsing). Never updated.
_fresh_digest = blake2b(digest_size=8).copy


def _py_digest64(data: bytes) -> int:
    """``int.from_bytes(blake2b(data, digest_size=8).digest(), "little")``, by hashlib."""
    digest = _fresh_digest()
    digest.update(data)
    return _FB(digest.digest(), "little")


#: The 64-bit BLAKE2b digest of a key's bytes: the compiled one when it is built.
_digest64: Callable[[bytes], int] = speedups.blake2b_64 if speedups else _py_digest64


def mix64(value: int) -> int:
    """The splitmix64 finalizer: a bijective mix of a 64-bit integer (Stafford variant 13)."""
    x = (value + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def hash_tag(data: str) -> str:
    """The part of ``data`` that is hashed: the first non-empty ``{tag}``, else all of it.

    Args:
        data: a string key.

    Returns:
        ``"acme"`` for ``"{acme}:order:17"``; ``data`` itself when it has no usable tag
        (``"{}x"`` and ``"a{b"`` have none, as in Redis Cluster).
    """
    start = data.find("{")
    if start >= 0:
        end = data.find("}", start + 1)
        if end > start + 1:
            return data[start + 1 : end]
    return data


def _bytes_tag(data: bytes) -> bytes:
    if 123 not in data:  # b"{"; testing an int is much cheaper than testing b"{"
        return data
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            return data[start + 1 : end]
    return data


def _encode_part(part: Any, out: bytearray, depth: int) -> None:
    if depth > 8:
        raise InvalidShardKeyError("compound shard keys nest at most 8 tuples deep")
    kind = type(part)
    if kind is str:
        try:
            data = part.encode()
        except UnicodeEncodeError:
            raise _unencodable(part) from None
        out += b"s"
    elif kind is bytes or kind is bytearray or kind is memoryview:
        data = bytes(part)
        out += b"b"
    elif kind is int:
        value: int = part
        data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
        out += b"i"
    elif isinstance(part, uuid.UUID):
        data = part.bytes
        out += b"u"
    elif kind is tuple:
        items: tuple[object, ...] = part
        out += b"t" + len(items).to_bytes(4, "little")
        for item in items:
            _encode_part(item, out, depth + 1)
        return
    else:
        raise _invalid(part)
    out += len(data).to_bytes(4, "little")
    out += data


def _unencodable(key: object) -> InvalidShardKeyError:
    """The error for a ``str`` key with no UTF-8 form (a lone surrogate such as ``"\\ud800"``)."""
    return InvalidShardKeyError(
        f"shard key {key!r:.60} is not valid Unicode text (it has no UTF-8 encoding, e.g. a "
        "lone surrogate); decode it properly or route by its bytes"
    )


def _invalid(key: object) -> InvalidShardKeyError:
    return InvalidShardKeyError(
        f"a shard key must be int, str, bytes, UUID or a tuple of them, not "
        f"{type(key).__name__} ({key!r:.60}); convert it explicitly (e.g. str(key)) so every "
        "process routes it the same way"
    )


def key_bytes(key: Any) -> bytes:
    """The canonical bytes hashed for ``key`` (hash tag applied), for keys that use a digest.

    Args:
        key: a shard key.

    Returns:
        The bytes fed to blake2b. Small non-negative ints have no byte form (they are mixed
        with :func:`mix64`); for them this returns their digest-path encoding, which
        :func:`key_hash` does not use.

    Raises:
        InvalidShardKeyError: the key's type has no stable encoding, or it is too large.
    """
    kind = type(key)
    if kind is str:
        try:
            data = hash_tag(key).encode()
        except UnicodeEncodeError:
            raise _unencodable(key) from None
    elif kind is bytes or kind is bytearray or kind is memoryview:
        data = _bytes_tag(bytes(key))
    elif kind is int:
        value: int = key
        data = b"\x01i" + value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    elif isinstance(key, uuid.UUID):
        data = key.bytes
    elif kind is tuple:
        out = bytearray(b"\x01t")
        _encode_part(key, out, 0)
        data = bytes(out)
    else:
        raise _invalid(key)
    if len(data) > MAX_KEY_BYTES:
        raise InvalidShardKeyError(
            f"shard key is {len(data)} bytes, over the {MAX_KEY_BYTES}-byte limit; "
            "route by a shorter identifier (an id or a hash tag)"
        )
    return data


def key_hash(key: Any) -> int:
    """The stable 64-bit hash of a shard key (see the module docstring for the exact rules).

    Args:
        key: an int, str, bytes, UUID or tuple of them.

    Returns:
        An integer in ``[0, 2**64)``, identical on every machine and Python version.

    Raises:
        InvalidShardKeyError: the key's type has no stable hash (float, bool, None, objects),
            or its encoding is over :data:`MAX_KEY_BYTES`.
    """
    kind = type(key)
    if kind is str:
        if "{" in key:
            key = hash_tag(key)
        try:
            data = key.encode()
        except UnicodeEncodeError:
            raise _unencodable(key) from None
        if len(data) <= MAX_KEY_BYTES:
            return _digest64(data)
    elif kind is int and 0 <= key <= _MASK:
        return mix64(key)
    return _digest64(key_bytes(key))


def directory_key(key: Any) -> str:
    """The text under which a directory stores ``key`` (hash tag applied).

    ``str`` keys are stored as themselves, ints in decimal, UUIDs in canonical form, bytes in
    hex and tuples as their parts joined with ``"/"``; so tenant ``42`` and ``"42"`` are the
    same directory entry on purpose.

    Raises:
        InvalidShardKeyError: the key's type has no stable encoding, or it is too large.
    """
    kind = type(key)
    if kind is str:
        text = hash_tag(key)
    elif kind is int:
        text = str(key)
    elif kind is bytes or kind is bytearray or kind is memoryview:
        text = _bytes_tag(bytes(key)).hex()
    elif isinstance(key, uuid.UUID):
        text = str(key)
    elif kind is tuple:
        text = "/".join(directory_key(part) for part in key)
    else:
        raise _invalid(key)
    if len(text) > MAX_KEY_BYTES:
        raise InvalidShardKeyError(
            f"shard key is {len(text)} characters, over the {MAX_KEY_BYTES} limit; "
            "route by a shorter identifier"
        )
    return text
