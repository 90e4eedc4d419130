from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from scalekit.errors import ConfigurationError, LoadShedError
from scalekit.resilience import AdaptiveLimit, AdaptiveLimitMiddleware
from scalekit.testing import ManualClock


async def test_sheds_calls_beyond_the_limit() -> None:
    limit = AdaptiveLimit(latency_threshold=1.0, initial_limit=2, clock=ManualClock())
    gate = asyncio.Event()
    tasks = [asyncio.create_task(limit.call(gate.wait)) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(LoadShedError) as info:
        await limit.call(gate.wait)
    assert info.value.retry_after == 1.0
    gate.set()
    await asyncio.gather(*tasks)
    assert limit.stats().shed == 1
    assert limit.in_flight == 0


async def test_limit_grows_additively_while_fast_and_busy() -> None:
    clock = ManualClock()
    limit = AdaptiveLimit(latency_threshold=1.0, initial_limit=4, max_limit=6, clock=clock)
    gate = asyncio.Event()
    for _ in range(5):
        tasks = [asyncio.create_task(limit.call(gate.wait)) for _ in range(limit.limit)]
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(*tasks)
        gate.clear()
    assert limit.limit == 6  # capped


async def test_limit_does_not_grow_when_mostly_idle() -> None:
    limit = AdaptiveLimit(latency_threshold=1.0, initial_limit=10, clock=ManualClock())

    async def quick() -> None:
        return None

    for _ in range(50):
        await limit.call(quick)
    assert limit.limit == 10


async def test_slow_calls_cut_the_limit_multiplicatively_once_per_window() -> None:
    clock = ManualClock()
    limit = AdaptiveLimit(
        latency_threshold=1.0, initial_limit=100, backoff=0.5, min_limit=10, clock=clock
    )

    async def slow() -> None:
        await clock.sleep(2.0)

    # a burst of three slow calls ending together cuts the limit once
    tasks = [asyncio.create_task(limit.call(slow)) for _ in range(3)]
    while clock.sleepers < 3:  # noqa: ASYNC110 - polls the clock's state
        await asyncio.sleep(0)
    await clock.advance(2.0)
    await asyncio.gather(*tasks)
    assert limit.limit == 50
    for _ in range(5):  # sequential slow calls, each a window apart: a cut each, to the floor
        task = asyncio.create_task(limit.call(slow))
        while clock.sleepers < 1:  # noqa: ASYNC110 - polls the clock's state
            await asyncio.sleep(0)
        await clock.advance(2.0)
        await task
    assert limit.limit == 10
    assert limit.stats().drops == 8


async def test_drop_on_exceptions_count_as_congestion_but_others_do_not() -> None:
    clock = ManualClock()
    limit = AdaptiveLimit(
        latency_threshold=1.0, initial_limit=10, backoff=0.5, drop_on=TimeoutError, clock=clock
    )

    async def raise_(exc: Exception) -> None:
        raise exc

    with pytest.raises(KeyError):
        await limit.call(raise_, KeyError())
    assert limit.limit == 10
    with pytest.raises(TimeoutError):
        await limit.call(raise_, TimeoutError())
    assert limit.limit == 5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"latency_threshold": 0},
        {"latency_threshold": 1, "min_limit": 0},
        {"latency_threshold": 1, "initial_limit": 0},
        {"latency_threshold": 1, "backoff": 1.0},
        {"latency_threshold": 1, "max_limit": 0},
    ],
)
def test_bad_configuration(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        AdaptiveLimit(**kwargs)  # type: ignore[arg-type]


def make_app(limit: AdaptiveLimit, gate: asyncio.Event) -> AdaptiveLimitMiddleware:
    async def slow(request: Request) -> PlainTextResponse:
        await gate.wait()
        return PlainTextResponse("done")

    async def broken(request: Request) -> PlainTextResponse:
        return PlainTextResponse("err", status_code=500)

    async def health(request: Request) -> PlainTextResponse:
        return PlainTextResponse("up")

    app = Starlette(
        routes=[Route("/slow", slow), Route("/broken", broken), Route("/health", health)]
    )
    return AdaptiveLimitMiddleware(app, limit=limit)


async def test_middleware_sheds_with_503_and_retry_after() -> None:
    limit = AdaptiveLimit(latency_threshold=5.0, initial_limit=1, retry_after=2.5)
    gate = asyncio.Event()
    transport = httpx.ASGITransport(app=make_app(limit, gate))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        first = asyncio.create_task(client.get("/slow"))
        while limit.in_flight == 0:  # noqa: ASYNC110 - polls the clock's state
            await asyncio.sleep(0)
        shed = await client.get("/slow")
        assert shed.status_code == 503
        assert shed.headers["retry-after"] == "3"
        assert (await client.get("/health")).text == "up"  # excluded path
        gate.set()
        assert (await first).text == "done"
    assert limit.in_flight == 0


async def test_middleware_counts_5xx_as_congestion() -> None:
    limit = AdaptiveLimit(latency_threshold=5.0, initial_limit=10, backoff=0.5)
    transport = httpx.ASGITransport(app=make_app(limit, asyncio.Event()))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/broken")).status_code == 500
    assert limit.limit == 5
    assert limit.in_flight == 0


async def test_middleware_passes_other_scopes_and_releases_on_app_errors() -> None:
    limit = AdaptiveLimit(latency_threshold=5.0, initial_limit=4, backoff=0.5)
    seen: list[str] = []

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        seen.append(str(scope["type"]))
        if scope["type"] == "http":
            raise RuntimeError("handler bug")

    middleware = AdaptiveLimitMiddleware(app, limit=limit)  # type: ignore[arg-type]

    async def receive() -> dict[str, object]:
        return {"type": "lifespan.startup"}

    async def send(message: object) -> None:
        return None

    await middleware({"type": "lifespan"}, receive, send)
    with pytest.raises(RuntimeError):
        await middleware({"type": "http", "path": "/x"}, receive, send)
    assert seen == ["lifespan", "http"]
    assert limit.in_flight == 0
    assert limit.limit == 2  # an app exception is a congestion signal
