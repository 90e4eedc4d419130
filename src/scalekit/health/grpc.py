"""The gRPC Health Checking Protocol (``grpc.health.v1.Health``) answered from a registry.

Needs ``grpcio`` and ``grpcio-health-checking`` (imported when the servicer is built, never
when :mod:`scalekit.health` is imported)::

    server = grpc.aio.server()
    GrpcHealthServicer(registry).add_to_server(server)

Service names map to groups: ``""`` (the server as a whole) and ``"readiness"`` to readiness,
``"liveness"`` and ``"startup"`` to theirs. ``pass`` and ``warn`` are ``SERVING``, ``fail`` is
``NOT_SERVING``; an unknown service is ``NOT_FOUND`` for ``Check`` and ``SERVICE_UNKNOWN`` for
``Watch``, as the protocol asks.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Mapping
from typing import Any

from scalekit._drivers import require
from scalekit.clock import SYSTEM_CLOCK, Clock
from scalekit.errors import ConfigurationError
from scalekit.health.registry import LIVENESS, READINESS, STARTUP, HealthRegistry

__all__ = ["DEFAULT_SERVICES", "GrpcHealthServicer"]

DEFAULT_SERVICES: Mapping[str, str | None] = {
    "": READINESS,
    READINESS: READINESS,
    LIVENESS: LIVENESS,
    STARTUP: STARTUP,
}
"""gRPC service name -> registry group (``None`` means every check)."""


class GrpcHealthServicer:
    """``grpc.health.v1.Health`` (``Check``, ``List``, ``Watch``) for ``grpc.aio`` servers.

    ``Watch`` streams the current status at once, then every change; it re-evaluates every
    ``watch_interval`` seconds (results come from the registry's cache, so watchers cost no
    extra dependency queries) and immediately when :meth:`HealthRegistry.begin_shutdown` is
    called, so clients stop sending before the drain ends.

    Args:
        registry: the checks to answer from.
        services: gRPC service name -> group.
        watch_interval: seconds between re-evaluations for ``Watch`` streams.
        clock: the clock ``watch_interval`` is waited on.

    Raises:
        MissingDependencyError: grpcio or grpcio-health-checking is not installed.
        ConfigurationError: ``watch_interval`` is not positive.
    """

    def __init__(
        self,
        registry: HealthRegistry,
        *,
        services: Mapping[str, str | None] | None = None,
        watch_interval: float = 1.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._grpc: Any = require("grpc", "grpc")
        self._pb2: Any = require("grpc_health.v1.health_pb2", "grpc")
        self._pb2_grpc: Any = require("grpc_health.v1.health_pb2_grpc", "grpc")
        if (
            isinstance(watch_interval, bool)
            or not isinstance(watch_interval, int | float)
            or not math.isfinite(watch_interval)
            or watch_interval <= 0
        ):
            raise ConfigurationError(
                f"watch_interval must be a finite number of seconds > 0, got {watch_interval!r}"
            )
        self.registry = registry
        self.services: dict[str, str | None] = dict(
            DEFAULT_SERVICES if services is None else services
        )
        self.watch_interval = float(watch_interval)
        self._clock = clock
        self._wakers: set[asyncio.Event] = set()
        self._epoch = 0
        registry.on_shutdown(self._wake_all)

    def add_to_server(self, server: Any) -> None:
        """Register this servicer on a ``grpc.aio`` server."""
        self._pb2_grpc.add_HealthServicer_to_server(self, server)

    async def _status(self, group: str | None) -> Any:
        report = await self.registry.run(group)
        response = self._pb2.HealthCheckResponse
        return response.SERVING if report.healthy else response.NOT_SERVING

    async def Check(self, request: Any, context: Any) -> Any:
        """Answer one check: ``SERVING``/``NOT_SERVING``, or abort with ``NOT_FOUND``."""
        if request.service not in self.services:
            await context.abort(
                self._grpc.StatusCode.NOT_FOUND, f"unknown health service {request.service!r}"
            )
        status = await self._status(self.services[request.service])
        return self._pb2.HealthCheckResponse(status=status)

    async def List(self, request: Any, context: Any) -> Any:
        """Answer the status of every known service."""
        names = list(self.services)
        statuses = await asyncio.gather(*(self._status(self.services[n]) for n in names))
        return self._pb2.HealthListResponse(
            statuses={
                name: self._pb2.HealthCheckResponse(status=status)
                for name, status in zip(names, statuses, strict=True)
            }
        )

    async def Watch(self, request: Any, context: Any) -> AsyncIterator[Any]:
        """Stream the status now and on every change, until the client cancels."""
        response = self._pb2.HealthCheckResponse
        last = None
        while True:
            epoch = self._epoch
            if request.service in self.services:
                status = await self._status(self.services[request.service])
            else:
                status = response.SERVICE_UNKNOWN
            if status != last:
                last = status
                yield response(status=status)
            await self._wait(epoch)

    async def _wait(self, epoch: int) -> None:
        if epoch != self._epoch:  # shutdown began while we were not waiting: re-check now
            return
        event = asyncio.Event()
        self._wakers.add(event)
        sleeper = asyncio.ensure_future(self._clock.sleep(self.watch_interval))
        waker = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait((sleeper, waker), return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._wakers.discard(event)
            sleeper.cancel()
            waker.cancel()

    def _wake_all(self) -> None:
        self._epoch += 1
        for event in list(self._wakers):
            event.set()

    def __repr__(self) -> str:
        return f"GrpcHealthServicer(services={sorted(self.services)})"
