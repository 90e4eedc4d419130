"""Import optional drivers on demand, with one wording for the missing-extra error."""

from __future__ import annotations

import importlib
from types import ModuleType

from scalekit.errors import MissingDependencyError

__all__ = ["require"]

# module -> the scalekit extra that installs it
_EXTRAS: dict[str, str] = {
    "redis": "redis",
    "redis.asyncio": "redis",
    "asyncpg": "postgres",
    "aio_pika": "rabbitmq",
    "msgpack": "msgpack",
    "orjson": "orjson",
    "grpc": "grpc",
    "grpc_health": "grpc",
    "cryptography": "crypto",
}


def require(module: str, extra: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the extra to install.

    Args:
        module: the dotted module name, e.g. ``"redis.asyncio"``.
        extra: the scalekit extra that installs it; looked up from the module when omitted.

    Raises:
        MissingDependencyError: the module (or its top-level package) is not installed.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        top = module.partition(".")[0]
        if exc.name is not None and exc.name != top and not module.startswith(exc.name):
            raise  # the driver is installed but one of *its* dependencies is missing
        name = extra or _EXTRAS.get(module) or _EXTRAS.get(top) or top
        raise MissingDependencyError(top, name) from exc
