"""Broker-independent logic: codec, retry schedule, scaling rules."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TypedDict

import pydantic
import pytest

from scalekit.errors import ConfigurationError, MessageDecodeError, MessageTooLargeError
from scalekit.queue import RetryPolicy, desired_workers
from scalekit.queue._message import decode_body, encode_body
from scalekit.queue.scaling import next_concurrency


@dataclass
class D:
    a: int
    b: str = "x"


class TD(TypedDict):
    a: int


class P(pydantic.BaseModel):
    a: int


def test_bytes_pass_through_with_octet_stream() -> None:
    assert encode_body(b"\x00\x01", max_bytes=10) == (b"\x00\x01", "application/octet-stream")


@pytest.mark.parametrize("body", [D(1), {"a": 1, "b": "x"}, P(a=1)])
def test_models_encode_as_json(body: object) -> None:
    data, ctype = encode_body(body, max_bytes=100)
    assert ctype == "application/json"
    assert data.startswith(b"{")
    assert b'"a":1' in data


def test_size_limit() -> None:
    with pytest.raises(MessageTooLargeError, match="limit"):
        encode_body("x" * 100, max_bytes=50)


def test_decode_into_models() -> None:
    assert decode_body(b'{"a":1}', "application/json", D) == D(1)
    assert decode_body(b'{"a":1}', "application/json", TD) == {"a": 1}
    assert decode_body(b'{"a":1}', "application/json", P) == P(a=1)
    assert decode_body(b"raw", "application/octet-stream", None) == b"raw"


@pytest.mark.parametrize(
    ("raw", "model"),
    [
        (b"{", None),
        (b'{"b":"x"}', D),
        (b'{"a":1,"zz":2}', D),
        (b"[1]", D),
        (b"{}", TD),
        (b'{"a":"nope"}', P),
        (b"\xff", D),
    ],
)
def test_hostile_or_invalid_bodies_raise_decode_error(raw: bytes, model: object) -> None:
    with pytest.raises(MessageDecodeError):
        decode_body(raw, "application/json", model)


def test_retry_delays_grow_capped_with_bounded_jitter() -> None:
    policy = RetryPolicy(max_attempts=6, initial_delay=1, multiplier=2, max_delay=5, jitter=0.2)
    assert [policy.base_delay_ms(n) for n in range(1, 6)] == [1000, 2000, 4000, 5000, 5000]
    rng = random.Random(1)
    for n in range(1, 6):
        base, ttl = policy.delay_ms(n, rng=rng)
        assert 0.8 * base <= ttl <= base
    assert policy.should_retry(5, RuntimeError())
    assert not policy.should_retry(6, RuntimeError())


def test_retry_on_limits_which_errors_retry() -> None:
    policy = RetryPolicy(retry_on=(ConnectionError,))
    assert policy.should_retry(1, ConnectionError())
    assert not policy.should_retry(1, ValueError())


@pytest.mark.parametrize("kwargs", [{"max_attempts": 0}, {"jitter": 1.0}, {"initial_delay": 0}])
def test_retry_policy_validates(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_desired_workers_keda_style() -> None:
    assert desired_workers(backlog=0, throughput_per_worker=10, min_workers=0) == 0
    assert desired_workers(backlog=6000, throughput_per_worker=10, drain_seconds=60) == 10
    assert desired_workers(backlog=10**9, throughput_per_worker=10, max_workers=50) == 50
    # inside the tolerance band the current count is kept (no flapping)
    assert desired_workers(backlog=6300, throughput_per_worker=10, current=10) == 10


def test_next_concurrency_rules() -> None:
    kw = {"min_concurrency": 2, "max_concurrency": 64}
    assert next_concurrency(8, backlog=100, in_flight=8, latency=0.01, **kw) == 12
    assert next_concurrency(8, backlog=0, in_flight=1, latency=0.01, **kw) == 6
    assert next_concurrency(8, backlog=100, in_flight=8, latency=2, latency_limit=1, **kw) == 6
    assert next_concurrency(2, backlog=0, in_flight=0, latency=0, **kw) == 2
    assert next_concurrency(60, backlog=10, in_flight=60, latency=0, **kw) == 64


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"content_type": "application/json", "headers": {"x-schema-version": "1"}},
        {"headers": {"traceparent": "00-ab-cd-01", "n": 3, "nested": {"k": [1, "é"]}}},
        {"correlation_id": "corr-1", "expiration_ms": 1500, "persistent": False},
        {"content_type": "text/plain", "correlation_id": "", "message_id": "é" * 100},
        {"headers": {}, "expiration_ms": 0, "body": b"x" * 200_000},
        {"message_id": "", "content_type": ""},
        {"headers": {"b": "2", "a": "é"}},
        {"headers": {"b": "2", "a": True}},
    ],
)
def test_content_header_frame_matches_pamqp(fields: dict[str, object]) -> None:
    pytest.importorskip("pamqp", reason="pamqp comes with the rabbitmq extra")
    from pamqp import frame, header
    from pamqp.commands import Basic

    from scalekit.queue._broker import OutgoingMessage
    from scalekit.queue.rabbitmq import _content_header_frame

    kwargs: dict[str, object] = {"routing_key": "q", "body": b"{}", "message_id": "m-1"}
    kwargs.update(fields)
    message = OutgoingMessage(**kwargs)  # type: ignore[arg-type]
    props = Basic.Properties(
        delivery_mode=2 if message.persistent else 1,
        message_id=message.message_id,
        headers=message.headers or None,
        content_type=message.content_type,
        correlation_id=message.correlation_id,
        expiration=str(message.expiration_ms) if message.expiration_ms is not None else None,
    )
    expected = frame.marshal(header.ContentHeader(properties=props, body_size=len(message.body)), 7)
    assert _content_header_frame(7, message) == expected


def test_content_header_frame_refuses_a_message_id_over_255_bytes() -> None:
    from scalekit.queue._broker import OutgoingMessage
    from scalekit.queue.rabbitmq import _content_header_frame

    message = OutgoingMessage(routing_key="q", body=b"", message_id="x" * 256)
    with pytest.raises(ConfigurationError, match="message id"):
        _content_header_frame(1, message)


async def test_window_hands_slots_in_order_and_times_out_each_waiter_on_its_own_deadline() -> None:
    import asyncio

    from scalekit.queue.producer import _Window

    window = _Window(1)
    assert window.try_acquire()
    assert not window.try_acquire()
    slow = asyncio.ensure_future(window.acquire(60.0))  # long deadline, first in line
    fast = asyncio.ensure_future(window.acquire(0.01))  # shorter deadline, behind it
    with pytest.raises(TimeoutError):
        await fast  # expires on its own deadline although an earlier waiter outlives it
    assert not slow.done()
    cancelled = asyncio.ensure_future(window.acquire(60.0))
    third = asyncio.ensure_future(window.acquire(60.0))
    await asyncio.sleep(0)
    cancelled.cancel()
    window.release()  # to `slow`, the oldest live waiter
    await slow
    window.release()  # skips the cancelled waiter, goes to `third`
    await third
    assert cancelled.cancelled()
    window.release()
    assert window.try_acquire()  # the slot came back to the pool
