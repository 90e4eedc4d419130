"""Fallback: answer with a default (or a degraded computation) when a call fails."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Generic, ParamSpec, TypeVar

from scalekit.errors import ConfigurationError
from scalekit.resilience._types import NEVER_COUNTED, ExceptionMatcher, matcher

__all__ = ["Fallback"]

P = ParamSpec("P")
T = TypeVar("T")
R = TypeVar("R")

_MISSING: Any = object()


class Fallback(Generic[R]):
    """Serve ``value``, or the result of ``handler(exc)``, when the call raises a chosen exception.

    Cancellation (``CancelledError``, ``KeyboardInterrupt``, ``SystemExit``) is never replaced by
    a fallback.

    Args:
        value: the answer to serve (returned as is; do not share a mutable object you mutate).
        handler: a sync or async callable taking the exception and returning the answer; use
            it for degraded computations (a stale cache read, an empty list, a default price).
        on: which exceptions trigger the fallback (types or a predicate). Default: every
            ``Exception``.

    Raises:
        ConfigurationError: neither or both of ``value`` and ``handler`` were given.
    """

    __slots__ = ("_on", "handler", "value")

    def __init__(
        self,
        value: R = _MISSING,
        *,
        handler: Callable[[BaseException], R | Awaitable[R]] | None = None,
        on: ExceptionMatcher = Exception,
    ) -> None:
        if (value is _MISSING) == (handler is None):
            raise ConfigurationError(
                "Fallback needs exactly one of value=... or handler=... "
                "(Fallback(None) serves None)"
            )
        if handler is not None and not callable(handler):
            raise ConfigurationError(f"handler={handler!r}: must be callable")
        self.value = value
        self.handler = handler
        self._on = matcher(on, "on") or (lambda exc: False)

    async def _serve(self, exc: BaseException) -> R:
        if self.handler is None:
            return self.value
        result = self.handler(exc)
        if inspect.isawaitable(result):
            return await result
        return result

    async def call(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T | R:
        """Run ``await fn(*args, **kwargs)``; on a chosen exception, serve the fallback."""
        try:
            return await fn(*args, **kwargs)
        except BaseException as exc:
            if isinstance(exc, NEVER_COUNTED) or not self._on(exc):
                raise
            return await self._serve(exc)

    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T | R]]:
        """Decorate an async function with this fallback."""

        @functools.wraps(fn)
        async def degraded(*args: P.args, **kwargs: P.kwargs) -> T | R:
            return await self.call(fn, *args, **kwargs)

        return degraded

    def __repr__(self) -> str:
        what = f"handler={self.handler!r}" if self.handler is not None else f"{self.value!r}"
        return f"Fallback({what})"
