"""JSON encoding of session values."""

from __future__ import annotations

import pytest

from scalekit.errors import SessionDataError
from scalekit.sessions._codec import decode_value, encode_value, field_size


def test_round_trip_of_json_types() -> None:
    value = {"a": [1, 2.5, True, None, "é"], "b": {"c": "d"}}
    assert decode_value(encode_value("k", value)) == value


@pytest.mark.parametrize("value", [{1, 2}, b"bytes", object(), float("inf"), float("nan")])
def test_non_json_values_raise(value: object) -> None:
    with pytest.raises(SessionDataError, match="'k'"):
        encode_value("k", value)


def test_size_counts_utf8_bytes_and_the_field_prefix() -> None:
    assert field_size("é", '"é"') == 2 + 2 + 4
