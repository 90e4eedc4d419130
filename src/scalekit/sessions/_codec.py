"""JSON encoding of session values (never pickle) and the byte accounting of the size limit.

Private: the cache primitive ships its own serializers; this module keeps sessions self-contained.
"""

from __future__ import annotations

import json
from typing import Any

from scalekit.errors import SessionDataError

__all__ = ["decode_value", "encode_value", "field_size"]

# Redis stores a session key as the hash field "d:<key>"; both backends count those 2 bytes.
_FIELD_PREFIX = b"d:"

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_decoder = json.JSONDecoder()


def encode_value(key: str, value: Any) -> str:
    """Encode one session value as compact JSON text.

    Raises:
        SessionDataError: the value holds something JSON cannot represent (a set, bytes, an
            object, NaN...).
    """
    try:
        return _encoder.encode(value)
    except (TypeError, ValueError) as exc:
        raise SessionDataError(
            f"session value for key {key!r} cannot be stored as JSON ({exc}); store only "
            "dict, list, str, int, float, bool and None (convert dates, UUIDs and sets first)"
        ) from exc


def decode_value(text: str) -> Any:
    """Decode one stored value (raises :class:`ValueError` on corrupt text)."""
    return _decoder.decode(text)


def field_size(key: str, text: str) -> int:
    """Bytes a key and its encoded value count against ``max_bytes`` (as Redis counts them)."""
    return len(key.encode()) + len(_FIELD_PREFIX) + len(text.encode())
