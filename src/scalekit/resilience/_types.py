"""Shared vocabulary of :mod:`scalekit.resilience`: exception matchers and the policy protocol."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeAlias, TypeVar

from scalekit.errors import ConfigurationError

__all__ = ["ExceptionMatcher", "Policy", "matcher"]

T = TypeVar("T")

ExceptionMatcher: TypeAlias = (
    "type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]"
)
"""An exception type, a tuple of types, or a predicate ``(exc) -> bool``."""

# Never a failure, never retried, never swallowed.
NEVER_COUNTED: tuple[type[BaseException], ...] = (
    asyncio.CancelledError,
    KeyboardInterrupt,
    SystemExit,
    GeneratorExit,
)


def matcher(value: Any, argument: str) -> Callable[[BaseException], bool] | None:
    """Turn an :data:`ExceptionMatcher` (or ``None``/empty tuple) into a predicate.

    Raises:
        ConfigurationError: ``value`` is neither a type, a tuple of types nor a callable.
    """
    if value is None or value == ():
        return None
    if isinstance(value, type) and issubclass(value, BaseException):
        types: tuple[type[BaseException], ...] = (value,)
    elif isinstance(value, tuple) and all(
        isinstance(t, type) and issubclass(t, BaseException) for t in value
    ):
        types = value
    elif callable(value):
        return value  # type: ignore[no-any-return]
    else:
        raise ConfigurationError(
            f"{argument}={value!r}: pass an exception type, a tuple of them, or a predicate "
            "taking the exception and returning bool"
        )

    def is_instance(exc: BaseException) -> bool:
        return isinstance(exc, types)

    return is_instance


class Policy(Protocol):
    """Anything a :class:`~scalekit.resilience.Pipeline` can compose: it runs a call for you."""

    async def call(
        self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any
    ) -> T:  # pragma: no cover - protocol
        """Run ``await fn(*args, **kwargs)`` under the policy and return its result."""
        ...
