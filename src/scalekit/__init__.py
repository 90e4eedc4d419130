"""scalekit: asyncio-native scalability building blocks.

Import only what you need; ``import scalekit`` and ``import scalekit.<primitive>`` never import
a driver (redis, asyncpg, aio-pika). Each primitive lives in its own subpackage:
:mod:`scalekit.resilience`, :mod:`scalekit.cache`, :mod:`scalekit.sessions`,
:mod:`scalekit.sharding`, :mod:`scalekit.db`, :mod:`scalekit.balance`, :mod:`scalekit.queue`
and :mod:`scalekit.health`.
"""

from __future__ import annotations

from scalekit._version import __version__
from scalekit.errors import CircuitOpenError, ScalekitError

__all__ = ["CircuitOpenError", "ScalekitError", "__version__"]
