"""Versioned tags: what a cache frame records about its tags, and the checks on tag names.

Each tag has a purge counter in the backend (``<namespace>:#tagv:<tag>``); a tagged frame
carries, after its header, the counters of its tags as they were when its value was loaded or
set: a count (``<H``), then per tag its UTF-8 name's length (``<H``), the name, and the
counter (``<Q``).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence

from scalekit.errors import InvalidCacheKeyError

__all__ = [
    "MAX_TAG_BYTES",
    "UNREAD",
    "Unread",
    "check_tag",
    "counters",
    "read_tag_section",
    "tag_section",
]

_COUNT = struct.Struct("<H")
_VERSION = struct.Struct("<Q")

#: Longest tag, in UTF-8 bytes.
MAX_TAG_BYTES = 1024


def check_tag(tag: str) -> str:
    """Return ``tag`` if it is a non-empty str of at most :data:`MAX_TAG_BYTES` UTF-8 bytes.

    Raises:
        InvalidCacheKeyError: it is not.
    """
    try:
        size = len(tag.encode()) if type(tag) is str else 0
    except UnicodeEncodeError:  # a lone surrogate
        size = 0
    if not 0 < size <= MAX_TAG_BYTES:
        raise InvalidCacheKeyError(
            f"tags are non-empty str of at most {MAX_TAG_BYTES} bytes, got {tag!r:.60}"
        )
    return tag


def counters(datas: Sequence[bytes | None]) -> list[int] | None:
    """Tag purge counters as read (absent: 0); ``None`` if one is not a counter."""
    try:
        return [0 if data is None else int(data) for data in datas]
    except ValueError:
        return None  # not a counter: trust no tagged value


class Unread:
    """The type of :data:`UNREAD`: versions not read yet."""


UNREAD = Unread()


def tag_section(versions: Mapping[str, int]) -> bytes:
    """The encoded ``tag -> counter`` pairs that follow a tagged frame's header."""
    parts = [_COUNT.pack(len(versions))]
    for tag, version in versions.items():
        name = tag.encode()
        parts += (_COUNT.pack(len(name)), name, _VERSION.pack(version))
    return b"".join(parts)


def read_tag_section(data: bytes, offset: int) -> tuple[tuple[tuple[str, int], ...], int]:
    """The ``(tag, counter)`` pairs at ``offset`` in ``data``, and the offset after them.

    Raises:
        struct.error: the section is cut short.
        UnicodeDecodeError: a tag name is not UTF-8.
    """
    (count,) = _COUNT.unpack_from(data, offset)
    offset += _COUNT.size
    tags = []
    for _ in range(count):
        (size,) = _COUNT.unpack_from(data, offset)
        offset += _COUNT.size
        name = data[offset : offset + size].decode()
        offset += size
        (version,) = _VERSION.unpack_from(data, offset)
        offset += _VERSION.size
        tags.append((name, version))
    return tuple(tags), offset
