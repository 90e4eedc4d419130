"""Retry schedule for failing handlers: exponential backoff with bounded jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass

from scalekit.errors import ConfigurationError

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failing handler is retried before its message goes to the dead-letter queue.

    Attempt ``n`` (1-based) that fails waits ``initial_delay * multiplier**(n-1)`` seconds, capped
    at ``max_delay``, minus up to ``jitter`` of it at random, in a delay queue, then is delivered
    again. After ``max_attempts`` failed attempts the message is dead-lettered.

    Delay queues are named by their delay in milliseconds (the un-jittered delay), so each
    attempt number uses one queue and changing the policy never conflicts with queues declared
    before. Jitter is applied as a per-message TTL below the queue's TTL, which bounds the
    head-of-line wait inside one delay queue to ``jitter`` of its delay.

    Attributes:
        max_attempts: total attempts, the first included (1 disables retries).
        initial_delay: seconds before the second attempt.
        multiplier: growth factor per attempt.
        max_delay: the longest wait in seconds.
        jitter: fraction (0..1) of each delay taken off at random to spread retries.
        retry_on: exception types that are retried; anything else is dead-lettered at once.
    """

    max_attempts: int = 5
    initial_delay: float = 1.0
    multiplier: float = 2.0
    max_delay: float = 300.0
    jitter: float = 0.2
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError("max_attempts must be at least 1")
        if self.initial_delay <= 0 or self.max_delay < self.initial_delay:
            raise ConfigurationError("delays must satisfy 0 < initial_delay <= max_delay")
        if self.multiplier < 1:
            raise ConfigurationError("multiplier must be >= 1")
        if not 0 <= self.jitter < 1:
            raise ConfigurationError("jitter must be in [0, 1)")

    def base_delay_ms(self, attempt: int) -> int:
        """The delay queue's TTL in ms after failed attempt ``attempt`` (1-based)."""
        delay = min(self.max_delay, self.initial_delay * self.multiplier ** (attempt - 1))
        return max(1, round(delay * 1000))

    def delay_ms(self, attempt: int, *, rng: random.Random | None = None) -> tuple[int, int]:
        """The (queue TTL, this message's TTL) in ms after failed attempt ``attempt``."""
        base = self.base_delay_ms(attempt)
        if not self.jitter:
            return base, base
        r = (rng or random).random()
        return base, max(1, round(base * (1.0 - self.jitter * r)))

    def should_retry(self, attempt: int, exc: BaseException) -> bool:
        """Whether a message whose attempt ``attempt`` raised ``exc`` gets another attempt."""
        return attempt < self.max_attempts and isinstance(exc, self.retry_on)
