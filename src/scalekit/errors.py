"""The scalekit error tree.

Every exception scalekit raises for a decision of its own derives from :class:`ScalekitError`.
Errors raised by a driver (redis, asyncpg, aio-pika) for a call the user asked for pass through
unchanged; errors scalekit raises because of a driver failure keep it as ``__cause__``.
Where a standard library type fits, the error inherits it too, so a scalekit timeout is also a
:class:`TimeoutError` and a bad argument is also a :class:`TypeError` or :class:`ValueError`::

    ScalekitError
    ├── MissingDependencyError (ImportError)      a driver extra is not installed
    ├── ConfigurationError (ValueError)           invalid construction arguments
    ├── ServiceUnavailableError                   a dependency could not be reached in time
    ├── ResilienceError
    │   ├── CircuitOpenError                      the breaker rejected the call
    │   ├── BulkheadFullError                     no concurrency slot within the max wait
    │   ├── LoadShedError                         the adaptive limit shed the call
    │   ├── RetryBudgetExhaustedError             retries exceed the budget's share of calls
    │   ├── RetryError                            all attempts failed
    │   └── DeadlineExceededError (TimeoutError)  the call or its deadline ran out of time
    ├── CacheError
    │   ├── CacheBackendError                     the backend failed (strict mode only)
    │   ├── SerializationError (ValueError)       a value cannot be encoded or decoded
    │   │   └── SignatureError                    a signed value failed verification
    │   ├── ValueTooLargeError (ValueError)       a value exceeds the size limit
    │   └── InvalidCacheKeyError (TypeError)      a cache key is not a non-empty str
    ├── SessionError
    │   ├── SessionTooLargeError (ValueError)     session data exceeds the size limit
    │   ├── SessionConflictError                  a concurrent update could not be merged
    │   ├── SessionDataError (TypeError)          a session value cannot be stored as JSON
    │   ├── SessionNotLoadedError (RuntimeError)  a lazy session was read before being loaded
    │   └── SessionStoreUnavailableError          the session store cannot be reached
    ├── ShardingError
    │   ├── InvalidShardKeyError (TypeError)      the key's type cannot be hashed stably
    │   ├── UnknownShardError (KeyError)          no shard of that name or for that key
    │   ├── ShardMovedError                       the router is stale: refresh and retry
    │   └── ShardUnavailableError                 the shard that owns the key is down
    │       └── ShardTimeoutError (TimeoutError)  the shard did not answer in time
    ├── BalanceError
    │   └── NoEndpointAvailableError              every endpoint is down or excluded
    ├── DatabaseError
    │   ├── NoReplicaAvailableError               no replica is usable and fallback is off
    │   ├── PrimaryNotFoundError                  no candidate is a writable primary
    │   ├── ReadOnlyPrimaryError                  the primary became read-only (failover)
    │   └── InvalidConsistencyTokenError (ValueError)
    ├── QueueError
    │   ├── PublishError                          the message was not confirmed
    │   │   ├── PublishTimeoutError (TimeoutError)
    │   │   ├── PublishNackedError                the broker refused the message
    │   │   └── UnroutableError                   no queue is bound for the routing key
    │   ├── MessageTooLargeError (ValueError)
    │   ├── MessageDecodeError (ValueError)       a consumed body is malformed
    │   └── BrokerUnavailableError                the broker cannot be reached in time
    └── HealthError
        └── CheckTimeoutError (TimeoutError)      a health check did not answer in time

Every message says what happened and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "BalanceError",
    "BrokerUnavailableError",
    "BulkheadFullError",
    "CacheBackendError",
    "CacheError",
    "CheckTimeoutError",
    "CircuitOpenError",
    "ConfigurationError",
    "DatabaseError",
    "DeadlineExceededError",
    "HealthError",
    "InvalidCacheKeyError",
    "InvalidConsistencyTokenError",
    "InvalidShardKeyError",
    "LoadShedError",
    "MessageDecodeError",
    "MessageTooLargeError",
    "MissingDependencyError",
    "NoEndpointAvailableError",
    "NoReplicaAvailableError",
    "PrimaryNotFoundError",
    "PublishError",
    "PublishNackedError",
    "PublishTimeoutError",
    "QueueError",
    "ReadOnlyPrimaryError",
    "ResilienceError",
    "RetryBudgetExhaustedError",
    "RetryError",
    "ScalekitError",
    "SerializationError",
    "ServiceUnavailableError",
    "SessionConflictError",
    "SessionDataError",
    "SessionNotLoadedError",
    "SessionError",
    "SessionStoreUnavailableError",
    "SessionTooLargeError",
    "ShardMovedError",
    "ShardTimeoutError",
    "ShardUnavailableError",
    "ShardingError",
    "SignatureError",
    "UnknownShardError",
    "UnroutableError",
    "ValueTooLargeError",
]


class ScalekitError(Exception):
    """Base class of every error scalekit raises for a decision of its own."""


class MissingDependencyError(ScalekitError, ImportError):
    """An optional driver is not installed; the message names the extra that brings it."""

    def __init__(self, module: str, extra: str) -> None:
        self.module = module
        self.extra = extra
        super().__init__(
            f"{module!r} is not installed, and this part of scalekit needs it. "
            f'Install it with: pip install "scalekit[{extra}]"'
        )


class ConfigurationError(ScalekitError, ValueError):
    """A constructor or method got arguments that cannot work together."""


class ServiceUnavailableError(ScalekitError):
    """A dependency (Redis, PostgreSQL, RabbitMQ) could not be reached within the time allowed."""


# -- resilience ---------------------------------------------------------------------------------


class ResilienceError(ScalekitError):
    """Base class of the errors raised by :mod:`scalekit.resilience`."""


class CircuitOpenError(ResilienceError):
    """The circuit breaker is open (or its half-open trial slots are taken) and rejected the call.

    Attributes:
        name: the breaker's name.
        retry_after: seconds until the breaker admits trial calls again (0 when unknown).
    """

    def __init__(self, name: str, retry_after: float, message: str | None = None) -> None:
        self.name = name
        self.retry_after = max(0.0, retry_after)
        super().__init__(
            message
            or (
                f"circuit breaker {name!r} is open; the call was not made. "
                f"Retry after {self.retry_after:.3f}s or serve a fallback."
            )
        )


class BulkheadFullError(ResilienceError):
    """The bulkhead had no free slot and its wait queue was full or the max wait passed."""


class LoadShedError(ResilienceError):
    """The adaptive concurrency limit shed the call to protect the service."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class RetryBudgetExhaustedError(ResilienceError):
    """A retry was not attempted because retries already exceed the budget's share of calls."""


class RetryError(ResilienceError):
    """Every attempt failed; the last attempt's exception is ``__cause__`` and ``last``."""

    def __init__(self, message: str, attempts: int, last: BaseException | None = None) -> None:
        self.attempts = attempts
        self.last = last
        super().__init__(message)


class DeadlineExceededError(ResilienceError, TimeoutError):
    """The call, or the deadline it inherited, ran out of time."""


# -- cache --------------------------------------------------------------------------------------


class CacheError(ScalekitError):
    """Base class of the errors raised by :mod:`scalekit.cache`."""


class CacheBackendError(CacheError):
    """The cache backend failed; raised only in strict mode (by default a cache fails open)."""


class SerializationError(CacheError, ValueError):
    """A value could not be serialized, or stored bytes could not be decoded."""


class SignatureError(SerializationError):
    """A signed value's HMAC did not verify with any configured key: it was not written by us."""


class ValueTooLargeError(CacheError, ValueError):
    """A value exceeds the configured maximum size."""


class InvalidCacheKeyError(CacheError, TypeError):
    """A cache key is not a non-empty ``str`` (build keys from ids explicitly: ``f"user:{id}"``)."""


# -- sessions -----------------------------------------------------------------------------------


class SessionError(ScalekitError):
    """Base class of the errors raised by :mod:`scalekit.sessions`."""


class SessionTooLargeError(SessionError, ValueError):
    """The session's serialized data exceeds the configured limit."""


class SessionConflictError(SessionError):
    """A concurrent update of the same session could not be merged after retrying."""


class SessionDataError(SessionError, TypeError):
    """A session key is not a string, or a value cannot be encoded as JSON."""


class SessionNotLoadedError(SessionError, RuntimeError):
    """A lazily loaded session was used before ``await session.load()``."""


class SessionStoreUnavailableError(SessionError, ServiceUnavailableError):
    """The session store did not answer within its timeout."""


# -- sharding -----------------------------------------------------------------------------------


class ShardingError(ScalekitError):
    """Base class of the errors raised by :mod:`scalekit.sharding`."""


class InvalidShardKeyError(ShardingError, TypeError):
    """The shard key's type has no stable hash (use int, str, bytes, UUID or a tuple of them)."""


class UnknownShardError(ShardingError, KeyError):
    """No shard has that name, or no shard owns the key."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ShardMovedError(ShardingError):
    """The caller's router is older than the topology: refresh the router and retry.

    Attributes:
        epoch: the epoch of the router that made the decision.
        current_epoch: the epoch now in force.
        shard: the shard that owns the key now, when known.
    """

    def __init__(
        self, message: str, *, epoch: int, current_epoch: int, shard: str | None = None
    ) -> None:
        self.epoch = epoch
        self.current_epoch = current_epoch
        self.shard = shard
        super().__init__(message)


class ShardUnavailableError(ShardingError, ServiceUnavailableError):
    """The shard that owns the key is down or did not answer in time."""


class ShardTimeoutError(ShardUnavailableError, TimeoutError):
    """The shard did not answer within its per-shard timeout (slow or hung)."""


# -- balance ------------------------------------------------------------------------------------


class BalanceError(ScalekitError):
    """Base class of the errors raised by :mod:`scalekit.balance`."""


class NoEndpointAvailableError(BalanceError, ServiceUnavailableError):
    """No endpoint can take the call: all are marked down, ejected or excluded by the filter."""


# -- db -----------------------------------------------------------------------------------------


class DatabaseError(ScalekitError):
    """Base class of the errors raised by :mod:`scalekit.db`."""


class NoReplicaAvailableError(DatabaseError):
    """No replica is healthy and fresh enough, and falling back to the primary is disabled."""


class PrimaryNotFoundError(DatabaseError, ServiceUnavailableError):
    """None of the primary candidates is reachable and writable."""


class ReadOnlyPrimaryError(DatabaseError):
    """The server taken for the primary is read-only (a failover happened); retry the write."""


class InvalidConsistencyTokenError(DatabaseError, ValueError):
    """A consistency token is malformed or was not produced by scalekit."""


# -- queue --------------------------------------------------------------------------------------


class QueueError(ScalekitError):
    """Base class of the errors raised by :mod:`scalekit.queue`."""


class PublishError(QueueError):
    """The message was not confirmed by the broker; it may or may not have been delivered."""


class PublishTimeoutError(PublishError, TimeoutError):
    """No confirm arrived within the publish timeout (the broker was down or unresponsive)."""


class PublishNackedError(PublishError):
    """The broker negatively acknowledged the message (for example a full queue)."""


class UnroutableError(PublishError):
    """The broker returned the message: no queue is bound for its routing key."""


class MessageTooLargeError(QueueError, ValueError):
    """The encoded message body exceeds the configured limit."""


class MessageDecodeError(QueueError, ValueError):
    """A consumed message body could not be decoded or validated."""


class BrokerUnavailableError(QueueError, ServiceUnavailableError):
    """The broker could not be reached within the time allowed."""


# -- health -------------------------------------------------------------------------------------


class HealthError(ScalekitError):
    """Base class of the errors raised by :mod:`scalekit.health`."""


class CheckTimeoutError(HealthError, TimeoutError):
    """A health check did not answer within its timeout."""
