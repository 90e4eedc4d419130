"""The gRPC health servicer over a real grpc.aio server on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from scalekit.errors import ConfigurationError
from scalekit.health import CheckResult, HealthRegistry
from scalekit.testing import ManualClock
from tests.health.helpers import until

grpc = pytest.importorskip("grpc")
health_pb2 = pytest.importorskip("grpc_health.v1.health_pb2")
health_pb2_grpc = pytest.importorskip("grpc_health.v1.health_pb2_grpc")

from scalekit.health.grpc import GrpcHealthServicer  # noqa: E402

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class Flag:
    def __init__(self) -> None:
        self.ok = True

    async def __call__(self) -> CheckResult | None:
        return None if self.ok else CheckResult.fail("down")


@pytest.fixture
async def served() -> AsyncIterator[tuple[HealthRegistry, Flag, ManualClock, Any]]:
    clock = ManualClock()
    reg = HealthRegistry(started=True, cache_for=0)
    flag = Flag()
    reg.add("db:x", flag)
    server = grpc.aio.server()
    GrpcHealthServicer(reg, watch_interval=1.0, clock=clock).add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield reg, flag, clock, health_pb2_grpc.HealthStub(channel)
    finally:
        await channel.close()
        await server.stop(None)


async def check(stub: Any, service: str) -> Any:
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return reply.status


async def test_check_maps_groups(served: Any) -> None:
    _, flag, _, stub = served
    assert await check(stub, "") == SERVING
    assert await check(stub, "liveness") == SERVING
    flag.ok = False
    assert await check(stub, "") == NOT_SERVING
    assert await check(stub, "readiness") == NOT_SERVING
    assert await check(stub, "liveness") == SERVING  # a dependency never fails liveness


async def test_check_unknown_service_is_not_found(served: Any) -> None:
    _, _, _, stub = served
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await check(stub, "payments")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_list(served: Any) -> None:
    reg, _, _, stub = served
    reg.begin_shutdown()
    reply = await stub.List(health_pb2.HealthListRequest(), timeout=5)
    statuses = {name: r.status for name, r in reply.statuses.items()}
    assert statuses == {
        "": NOT_SERVING,
        "readiness": NOT_SERVING,
        "liveness": SERVING,
        "startup": SERVING,
    }


async def test_watch_streams_changes_and_wakes_on_shutdown(served: Any) -> None:
    reg, flag, clock, stub = served
    call = stub.Watch(health_pb2.HealthCheckRequest(service=""))
    try:
        assert (await call.read()).status == SERVING
        flag.ok = False
        await until(lambda: clock.sleepers >= 1)
        await clock.advance(1.0)
        assert (await call.read()).status == NOT_SERVING
        flag.ok = True
        await until(lambda: clock.sleepers >= 1)
        await clock.advance(1.0)
        assert (await call.read()).status == SERVING
        reg.begin_shutdown()  # no clock advance: shutdown wakes watchers at once
        assert (await call.read()).status == NOT_SERVING
    finally:
        call.cancel()


async def test_watch_unknown_service_stays_open(served: Any) -> None:
    _, _, clock, stub = served
    call = stub.Watch(health_pb2.HealthCheckRequest(service="payments"))
    try:
        assert (await call.read()).status == SERVICE_UNKNOWN
        await until(lambda: clock.sleepers >= 1)
        assert not call.done()
    finally:
        call.cancel()


def test_bad_watch_interval() -> None:
    with pytest.raises(ConfigurationError):
        GrpcHealthServicer(HealthRegistry(), watch_interval=0)
