"""Message envelope, body codec and header names: the broker-independent vocabulary."""

from __future__ import annotations

import dataclasses
import json
import typing
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from scalekit.errors import MessageDecodeError, MessageTooLargeError

__all__ = [
    "CONTENT_TYPE_BYTES",
    "CONTENT_TYPE_JSON",
    "HEADER_ATTEMPT",
    "HEADER_SCHEMA_VERSION",
    "Confirmed",
    "Message",
    "decode_body",
    "encode_body",
    "new_message_id",
]

T = TypeVar("T")

CONTENT_TYPE_JSON = "application/json"
CONTENT_TYPE_BYTES = "application/octet-stream"

# Header names scalekit writes. Kept short and namespaced; documented in docs/queue.md.
HEADER_SCHEMA_VERSION = "x-schema-version"
HEADER_ATTEMPT = "x-sk-attempt"
HEADER_ERROR = "x-sk-error"
HEADER_ERROR_TYPE = "x-sk-error-type"
HEADER_ATTEMPTS = "x-sk-attempts"
HEADER_REASON = "x-sk-reason"
HEADER_QUEUE = "x-sk-queue"
HEADER_ORIGINAL_EXCHANGE = "x-sk-original-exchange"
HEADER_ORIGINAL_ROUTING_KEY = "x-sk-original-routing-key"
HEADER_DEAD_LETTERED_AT = "x-sk-dead-lettered-at"
HEADER_REPLAYED = "x-sk-replayed"

_MAX_ERROR_CHARS = 1000


def new_message_id() -> str:
    """A fresh random message id (32 hex characters)."""
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Confirmed:
    """The outcome of a confirmed publish: the broker has taken responsibility for the message.

    Attributes:
        message_id: the id the message carries (consumers deduplicate on it).
        routing_key: where it was routed.
        attempts: how many times it was sent; more than 1 means it was republished after a
            connection loss, so the consumer may see it more than once.
        elapsed: seconds from the call to the confirm.
    """

    message_id: str
    routing_key: str
    attempts: int
    elapsed: float


@dataclass(frozen=True, slots=True)
class Message(Generic[T]):
    """A consumed message as the handler sees it.

    Attributes:
        body: the decoded body (a model instance when the handler declared one).
        message_id: the producer's id, stable across redeliveries and retries.
        headers: the AMQP headers (trace context, scalekit headers, your own).
        routing_key: the routing key it was published with.
        queue: the queue it was consumed from.
        attempt: 1 for the first delivery, then 2, 3... for scheduled retries.
        redelivered: the broker delivered it before without an ack (a consumer died).
        raw: the undecoded body bytes.
        content_type: the content type set by the producer.
    """

    body: T
    message_id: str
    headers: Mapping[str, Any]
    routing_key: str
    queue: str
    attempt: int = 1
    redelivered: bool = False
    raw: bytes = field(default=b"", repr=False)
    content_type: str | None = None


def _default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    dump = getattr(value, "model_dump", None)
    if callable(dump):  # pydantic v2, without importing pydantic
        return dump(mode="json")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    isoformat = getattr(value, "isoformat", None)
    if callable(isoformat):
        return isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _dumps() -> typing.Callable[[Any], bytes]:
    try:
        import orjson
    except ImportError:  # pragma: no cover - orjson is optional
        encoder = json.JSONEncoder(default=_default, separators=(",", ":"), ensure_ascii=False)
        return lambda value: encoder.encode(value).encode()

    def dumps(value: Any) -> bytes:
        return orjson.dumps(value, default=_default, option=orjson.OPT_SERIALIZE_NUMPY)

    return dumps


def _loads() -> typing.Callable[[bytes], Any]:
    try:
        import orjson
    except ImportError:  # pragma: no cover
        return json.loads
    return orjson.loads


_DUMPS = _dumps()
_LOADS = _loads()


def encode_body(body: object, *, max_bytes: int) -> tuple[bytes, str]:
    """Encode a body: bytes as is, everything else as JSON.

    Dataclasses, TypedDicts (plain dicts), pydantic models, UUIDs, datetimes and sets are
    understood.

    Args:
        body: the payload.
        max_bytes: the largest encoded size allowed.

    Returns:
        The encoded bytes and their content type.

    Raises:
        MessageTooLargeError: the encoded body is larger than ``max_bytes``.
        TypeError: the body cannot be encoded as JSON.
    """
    if isinstance(body, bytes):
        data, content_type = body, CONTENT_TYPE_BYTES
    elif isinstance(body, (bytearray, memoryview)):
        data, content_type = bytes(body), CONTENT_TYPE_BYTES
    else:
        try:
            data = _DUMPS(body)
        except TypeError as exc:
            raise TypeError(
                f"cannot encode a {type(body).__name__} as JSON: {exc}; pass bytes, a dataclass, "
                "a dict, a pydantic model or another JSON-serializable value"
            ) from exc
        content_type = CONTENT_TYPE_JSON
    if len(data) > max_bytes:
        raise MessageTooLargeError(
            f"the encoded message is {len(data)} bytes, over the {max_bytes}-byte limit; store the "
            "payload elsewhere (object storage) and send a reference, or raise max_message_bytes"
        )
    return data, content_type


def decode_body(data: bytes, content_type: str | None, model: Any = None) -> Any:
    """Decode a consumed body and, when ``model`` is given, validate it into that type.

    Args:
        data: the raw body.
        content_type: the message's content type.
        model: ``bytes``, a dataclass, a TypedDict, a pydantic model class, or ``None`` for plain
            JSON (or bytes when the content type is not JSON).

    Raises:
        MessageDecodeError: the body is not valid JSON or does not fit the model.
    """
    if model is bytes:
        return data
    if model is None and content_type not in (None, CONTENT_TYPE_JSON):
        return data
    try:
        value = _LOADS(data)
    except ValueError as exc:
        raise MessageDecodeError(f"the body is not valid JSON: {exc}") from exc
    if model is None or model is typing.Any:
        return value
    return _validate(value, model)


def _validate(value: Any, model: Any) -> Any:
    validate = getattr(model, "model_validate", None)
    if callable(validate):  # pydantic v2
        try:
            return validate(value)
        except Exception as exc:  # pydantic.ValidationError, without importing pydantic
            raise MessageDecodeError(f"the body does not match {model.__name__}: {exc}") from exc
    if not isinstance(value, dict):
        raise MessageDecodeError(
            f"the body must be a JSON object for {getattr(model, '__name__', model)}, "
            f"got {type(value).__name__}"
        )
    if dataclasses.is_dataclass(model) and isinstance(model, type):
        names = {f.name for f in dataclasses.fields(model) if f.init}
        unknown = set(value) - names
        if unknown:
            raise MessageDecodeError(f"unexpected fields {sorted(unknown)} for {model.__name__}")
        try:
            return model(**value)
        except TypeError as exc:
            raise MessageDecodeError(f"the body does not match {model.__name__}: {exc}") from exc
    required = getattr(model, "__required_keys__", None)
    if required is not None:  # a TypedDict
        missing = set(required) - set(value)
        if missing:
            raise MessageDecodeError(
                f"the body lacks required keys {sorted(missing)} of {model.__name__}"
            )
        return value
    if model is dict:
        return value
    raise TypeError(
        f"unsupported model {model!r}: use a dataclass, a TypedDict, a pydantic model or bytes"
    )


def error_text(exc: BaseException) -> str:
    """``Type: message`` of an exception, truncated for a header."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 3] + "..."
