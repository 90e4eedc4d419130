"""Compose resilience policies into one, in an order that is correct by construction.

``Pipeline(...)`` sorts its policies into this order, outermost first, whatever order you pass
them in (pass ``reorder=False`` to keep yours)::

    Fallback            answers for anything that still fails below it
      Timeout           one deadline for the whole operation, retries included
        Retry           retries failed attempts within that deadline and the retry budget
          CircuitBreaker  sees every attempt; when open, Retry does not retry it
            AdaptiveLimit / Bulkhead   cap concurrency of the attempts actually made
              Timeout(per_attempt=True)  each attempt's own limit (a breaker failure)
                your function

Why: the fallback must see the final outcome; the overall timeout must bound retries and their
waits; the breaker must count each attempt (a retry loop outside it would hide failures from it,
one inside it would be multiplied by it); concurrency limits must count real attempts only; and
an attempt's own timeout must be inside the breaker so a hung dependency trips it.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from scalekit.errors import ConfigurationError
from scalekit.resilience.adaptive import AdaptiveLimit
from scalekit.resilience.breaker import CircuitBreaker
from scalekit.resilience.bulkhead import Bulkhead
from scalekit.resilience.fallback import Fallback
from scalekit.resilience.retry import Retry
from scalekit.resilience.timeout import Timeout

__all__ = ["Pipeline"]

P = ParamSpec("P")
T = TypeVar("T")


def _rank(policy: Any) -> int:
    if isinstance(policy, Fallback):
        return 0
    if isinstance(policy, Timeout):
        return 5 if policy.per_attempt else 1
    if isinstance(policy, Retry):
        return 2
    if isinstance(policy, CircuitBreaker):
        return 3
    if isinstance(policy, (AdaptiveLimit, Bulkhead)):
        return 4
    return 4  # a custom policy: next to the concurrency limits


class Pipeline:
    """Several policies applied as one.

    Usable as ``await pipeline.call(fn, *args, **kwargs)`` and as ``@pipeline`` on an async
    function (its signature is kept)::

        pipeline = Pipeline(Fallback([]), Timeout(2.0), Retry(attempts=3), breaker)

        @pipeline
        async def recommendations(user_id: int) -> list[str]: ...

    Args:
        *policies: objects with ``async call(fn, *args, **kwargs)``: the scalekit policies or
            your own.
        reorder: sort the policies into the documented order (default); ``False`` applies them
            as given, the first outermost.

    Raises:
        ConfigurationError: a policy has no ``call`` method, or two policies of a kind that
            must be unique (fallback, overall timeout, retry) are given.
    """

    __slots__ = ("policies",)

    def __init__(self, *policies: Any, reorder: bool = True) -> None:
        for policy in policies:
            if not callable(getattr(policy, "call", None)):
                raise ConfigurationError(
                    f"{policy!r} is not a policy: it needs an async call(fn, *args, **kwargs)"
                )
        ordered = sorted(policies, key=_rank) if reorder else list(policies)
        if reorder:
            for rank, kind in ((0, "Fallback"), (1, "Timeout"), (2, "Retry")):
                if sum(1 for p in ordered if _rank(p) == rank and not _custom(p)) > 1:
                    raise ConfigurationError(
                        f"Pipeline got two {kind} policies of the same role; pass one "
                        "(or reorder=False to nest them yourself)"
                    )
        self.policies: tuple[Any, ...] = tuple(ordered)

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``await fn(*args, **kwargs)`` through every policy.

        Raises:
            Exception: whatever the policies raise (CircuitOpenError, RetryError,
                DeadlineExceededError, BulkheadFullError, LoadShedError) or ``fn`` raises,
                unless a Fallback answers.
        """
        chained: Callable[..., Awaitable[Any]] = fn
        for policy in reversed(self.policies):
            chained = functools.partial(policy.call, chained)
        return await chained(*args, **kwargs)  # type: ignore[no-any-return]

    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        """Decorate an async function so each call runs through the pipeline."""
        chained: Callable[..., Awaitable[Any]] = fn
        for policy in reversed(self.policies):
            chained = functools.partial(policy.call, chained)

        @functools.wraps(fn)
        async def protected(*args: P.args, **kwargs: P.kwargs) -> T:
            return await chained(*args, **kwargs)  # type: ignore[no-any-return]

        return protected

    def __repr__(self) -> str:
        return f"Pipeline({', '.join(map(repr, self.policies))})"


def _custom(policy: Any) -> bool:
    return not isinstance(
        policy, (Fallback, Timeout, Retry, CircuitBreaker, AdaptiveLimit, Bulkhead)
    )
