"""scalekit: asyncio-native scalability building blocks.

Import only what you need; ``import scalekit`` and ``import scalekit.<primitive>`` never import
a driver (redis, asyncpg, aio-pika). Each primitive lives in its own subpackage:
:mod:`scalekit.resilience`, :mod:`scalekit.cache`, :mod:`scalekit.sessions`,
:mod:`scalekit.sharding`, :mod:`scalekit.db`, :mod:`scalekit.balance`, :mod:`scalekit.queue`
and :mod:`scalekit.health`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scalekit._version import __version__
from scalekit.errors import CircuitOpenError, ScalekitError

if TYPE_CHECKING:
    from scalekit.resilience import CircuitBreaker

__all__ = ["CircuitBreaker", "CircuitOpenError", "ScalekitError", "__version__"]


def __getattr__(name: str) -> Any:
    # lazy re-exports keep `import scalekit` cheap: the subpackage loads on first access
    if name == "CircuitBreaker":
        from scalekit.resilience import CircuitBreaker

        return CircuitBreaker
    raise AttributeError(f"module 'scalekit' has no attribute {name!r}")
