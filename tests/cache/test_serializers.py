from __future__ import annotations

import contextlib
import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalekit.cache import JsonSerializer, MsgpackSerializer, SignedSerializer, Signer
from scalekit.errors import ConfigurationError, SerializationError, SignatureError

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)

KEY_NEW = b"n" * 32
KEY_OLD = b"o" * 32


@pytest.mark.parametrize("use_orjson", [True, False])
@given(value=json_values)
@settings(max_examples=60, deadline=None)
def test_json_round_trips(use_orjson: bool, value: Any) -> None:
    s = JsonSerializer(use_orjson=use_orjson)
    assert s.loads(s.dumps(value)) == value


def test_orjson_and_stdlib_read_each_other() -> None:
    doc = {"a": [1, 2.5, "é", None, True]}
    fast, slow = JsonSerializer(use_orjson=True), JsonSerializer(use_orjson=False)
    assert slow.loads(fast.dumps(doc)) == doc
    assert fast.loads(slow.dumps(doc)) == doc


@given(data=st.binary(max_size=200))
@settings(max_examples=100, deadline=None)
def test_hostile_bytes_raise_serialization_error_only(data: bytes) -> None:
    for s in (JsonSerializer(use_orjson=True), JsonSerializer(use_orjson=False)):
        with contextlib.suppress(SerializationError):
            s.loads(data)
    with contextlib.suppress(SerializationError):
        MsgpackSerializer().loads(data)


@given(value=json_values | st.binary())
@settings(max_examples=60, deadline=None)
def test_msgpack_round_trips(value: Any) -> None:
    s = MsgpackSerializer()
    assert s.loads(s.dumps(value)) == value


def test_msgpack_refuses_extension_types() -> None:
    import msgpack

    data = msgpack.packb(msgpack.ExtType(42, b"payload"))
    with pytest.raises(SerializationError, match="extension type 42"):
        MsgpackSerializer().loads(data)


def test_unencodable_values_raise_serialization_error() -> None:
    with pytest.raises(SerializationError, match="cannot encode a set"):
        JsonSerializer().dumps({1, 2})
    with pytest.raises(SerializationError):
        JsonSerializer(use_orjson=False).dumps(math.nan)
    with pytest.raises(SerializationError):
        MsgpackSerializer().dumps(object())


def test_json_default_converts_unknown_types() -> None:
    s = JsonSerializer(use_orjson=False, default=sorted)
    assert json.loads(s.dumps({"s": {3, 1}})) == {"s": [1, 3]}


@given(value=json_values)
@settings(max_examples=100, deadline=None)
def test_signed_round_trip(value: Any) -> None:
    s = SignedSerializer(JsonSerializer(), Signer([KEY_NEW]))
    assert s.loads(s.dumps(value)) == value


@given(data=st.binary(max_size=300))
@settings(max_examples=100, deadline=None)
def test_signer_refuses_hostile_bytes(data: bytes) -> None:
    with pytest.raises(SignatureError):
        Signer([KEY_NEW]).verify(data)


def test_every_single_bit_flip_is_detected() -> None:
    signer = Signer([KEY_NEW])
    signed = signer.sign(b'{"admin": false}')
    for i in range(len(signed)):
        for bit in range(8):
            tampered = bytearray(signed)
            tampered[i] ^= 1 << bit
            with pytest.raises(SignatureError):
                signer.verify(bytes(tampered))


def test_key_rotation_verifies_old_and_signs_with_new() -> None:
    old = Signer([KEY_OLD])
    rotated = Signer([KEY_NEW, KEY_OLD])
    assert rotated.verify(old.sign(b"v1")) == b"v1"
    signed_new = rotated.sign(b"v2")
    with pytest.raises(SignatureError, match="key this process does not have"):
        old.verify(signed_new)
    retired = Signer([KEY_NEW])
    with pytest.raises(SignatureError):
        retired.verify(old.sign(b"v1"))


def test_unsigned_value_is_refused_with_a_clear_message() -> None:
    with pytest.raises(SignatureError, match="not signed by scalekit"):
        Signer([KEY_NEW]).verify(b'{"x": 1}')


def test_signer_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="at least one key"):
        Signer([])
    with pytest.raises(ConfigurationError, match="16 bytes"):
        Signer([b"short"])
    with pytest.raises(ConfigurationError, match="list of keys"):
        Signer(b"x" * 32)  # type: ignore[arg-type]
    assert "hidden" in repr(Signer([KEY_NEW]))
    assert "nnnn" not in repr(Signer([KEY_NEW]))
