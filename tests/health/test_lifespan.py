from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from types import FrameType
from typing import Any

import pytest

from scalekit.errors import ConfigurationError
from scalekit.health import (
    LIVENESS,
    READINESS,
    HealthLifespan,
    HealthRegistry,
    Status,
    health_lifespan,
    install_signal_handlers,
)
from scalekit.testing import ManualClock
from tests.health.helpers import until


class LifespanDriver:
    """Plays the server's side of the ASGI lifespan protocol."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: list[str] = []
        self.task: asyncio.Task[None] | None = None

    async def _send(self, message: dict[str, Any]) -> None:
        self.sent.append(message["type"])

    async def startup(self) -> None:
        self.task = asyncio.ensure_future(
            self.app(
                {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                self.inbox.get,
                self._send,
            )
        )
        await self.inbox.put({"type": "lifespan.startup"})
        await until(lambda: "lifespan.startup.complete" in self.sent)

    async def shutdown(self) -> None:
        await self.inbox.put({"type": "lifespan.shutdown"})

    async def finished(self) -> None:
        assert self.task is not None
        await asyncio.wait_for(self.task, 5)


def starlette_app(events: list[str], lifespan: Any = None) -> Any:
    from starlette.applications import Starlette

    @contextlib.asynccontextmanager
    async def app_lifespan(app: Any) -> AsyncIterator[None]:
        events.append("pool opened")
        yield
        events.append("pool closed")

    return Starlette(lifespan=lifespan or app_lifespan)


async def test_middleware_marks_started_and_drains_before_app_shutdown() -> None:
    events: list[str] = []
    clock = ManualClock()
    reg = HealthRegistry(clock=clock)
    driver = LifespanDriver(
        HealthLifespan(starlette_app(events), reg, drain_delay=5.0, clock=clock)
    )
    assert not reg.started
    await driver.startup()
    assert reg.started
    assert events == ["pool opened"]
    await driver.shutdown()
    await until(lambda: reg.shutting_down)
    # readiness fails while the app's pools are still open (the drain window)
    assert (await reg.run(READINESS)).status is Status.FAIL
    assert (await reg.run(LIVENESS)).status is Status.PASS
    assert events == ["pool opened"]
    await until(lambda: clock.sleepers == 1)
    await clock.advance(5.0)
    await driver.finished()
    assert events == ["pool opened", "pool closed"]
    assert driver.sent[-1] == "lifespan.shutdown.complete"


async def test_middleware_passes_other_scopes_through() -> None:
    import httpx
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hi")

    app = HealthLifespan(Starlette(routes=[Route("/", hello)]), HealthRegistry())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        assert (await c.get("/")).text == "hi"


async def test_health_lifespan_wraps_the_app_lifespan() -> None:
    from fastapi import FastAPI

    events: list[str] = []
    clock = ManualClock()
    reg = HealthRegistry(clock=clock)

    @contextlib.asynccontextmanager
    async def inner(app: Any) -> AsyncIterator[dict[str, str]]:
        events.append("open")
        yield {"pool": "p"}
        events.append("close")

    app = FastAPI(lifespan=health_lifespan(reg, inner, drain_delay=2.0, clock=clock))
    driver = LifespanDriver(app)
    await driver.startup()
    assert reg.started
    assert events == ["open"]
    await driver.shutdown()
    await until(lambda: clock.sleepers == 1)
    assert reg.shutting_down
    assert events == ["open"]  # not closed during the drain
    await clock.advance(2.0)
    await driver.finished()
    assert events == ["open", "close"]


async def test_health_lifespan_without_inner_and_without_delay() -> None:
    reg = HealthRegistry()
    lifespan = health_lifespan(reg)
    async with lifespan(object()) as state:
        assert state is None
        assert reg.started
    assert reg.shutting_down


async def test_health_lifespan_in_litestar() -> None:
    from litestar import Litestar

    reg = HealthRegistry()
    driver = LifespanDriver(Litestar(lifespan=[health_lifespan(reg)]))
    await driver.startup()
    assert reg.started
    await driver.shutdown()
    await driver.finished()
    assert reg.shutting_down


@pytest.mark.parametrize("delay", [-1, float("nan"), float("inf")])
def test_bad_drain_delay(delay: float) -> None:
    with pytest.raises(ConfigurationError):
        health_lifespan(HealthRegistry(), drain_delay=delay)
    with pytest.raises(ConfigurationError):
        HealthLifespan(object(), HealthRegistry(), drain_delay=delay)  # type: ignore[arg-type]


async def test_sigterm_flips_readiness_then_forwards_after_the_drain() -> None:
    clock = ManualClock()
    reg = HealthRegistry(clock=clock, started=True)
    forwarded: list[int] = []

    def server_handler(signum: int, frame: FrameType | None) -> None:
        forwarded.append(signum)

    original = signal.signal(signal.SIGTERM, server_handler)
    try:
        restore = install_signal_handlers(reg, drain_delay=10.0, clock=clock)
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            await until(lambda: reg.shutting_down)
            assert (await reg.run(READINESS)).status is Status.FAIL
            assert (await reg.run(LIVENESS)).status is Status.PASS
            await until(lambda: clock.sleepers == 1)
            assert forwarded == []  # the server keeps serving during the drain
            await clock.advance(10.0)
            await until(lambda: forwarded == [signal.SIGTERM])
        finally:
            restore()
        assert signal.getsignal(signal.SIGTERM) is server_handler
    finally:
        signal.signal(signal.SIGTERM, original)


async def test_second_sigterm_forwards_at_once() -> None:
    clock = ManualClock()
    reg = HealthRegistry(clock=clock, started=True)
    forwarded: list[int] = []
    original = signal.signal(signal.SIGTERM, lambda s, f: forwarded.append(s))
    try:
        restore = install_signal_handlers(reg, drain_delay=30.0, clock=clock)
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            await until(lambda: reg.shutting_down)
            os.kill(os.getpid(), signal.SIGTERM)
            await until(lambda: forwarded == [signal.SIGTERM])
        finally:
            restore()
    finally:
        signal.signal(signal.SIGTERM, original)


async def test_ignored_signal_stays_ignored() -> None:
    reg = HealthRegistry(started=True)
    original = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        restore = install_signal_handlers(reg, signals=(signal.SIGUSR1,))
        try:
            os.kill(os.getpid(), signal.SIGUSR1)
            await until(lambda: reg.shutting_down)
            for _ in range(5):
                await asyncio.sleep(0)
        finally:
            restore()
        assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGUSR1, original)


def test_install_needs_a_running_loop() -> None:
    with pytest.raises(RuntimeError):
        install_signal_handlers(HealthRegistry())
