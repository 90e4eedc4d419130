from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from scalekit.errors import ConfigurationError
from scalekit.health import (
    CONTENT_TYPE,
    CheckResult,
    HealthApp,
    HealthRegistry,
    Status,
)
from scalekit.testing import ManualClock
from tests.health.draft import validate
from tests.health.helpers import until

TOKEN = "s3cr3t-token"


def make_registry(*, started: bool = True) -> HealthRegistry:
    reg = HealthRegistry(clock=ManualClock(), started=started)

    async def db() -> CheckResult:
        return CheckResult.passed(1.25, "ms")

    async def search() -> None:
        raise ConnectionError("search at http://admin:pw123@search:9200 refused")

    reg.add("postgres:responseTime", db, component_type="datastore")
    reg.add("search:responseTime", search, critical=False)
    return reg


def client(app: Any, base: str = "http://testserver") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base)


async def test_default_paths_status_and_headers() -> None:
    app = HealthApp(make_registry())
    async with client(app) as c:
        for path, code, status in [
            ("/livez", 200, "pass"),
            ("/readyz", 200, "warn"),
            ("/startupz", 200, "pass"),
            ("/", 200, "warn"),
        ]:
            resp = await c.get(path)
            assert resp.status_code == code, path
            assert resp.headers["content-type"] == CONTENT_TYPE
            assert resp.headers["cache-control"] == "no-store"
            assert resp.json() == {"status": status}


async def test_fail_is_503() -> None:
    reg = make_registry()

    async def down() -> None:
        raise OSError("down")

    reg.add("redis:ping", down)
    async with client(HealthApp(reg)) as c:
        resp = await c.get("/readyz")
    assert resp.status_code == 503
    assert resp.json() == {"status": "fail"}


async def test_head_has_headers_and_no_body() -> None:
    async with client(HealthApp(make_registry())) as c:
        get = await c.get("/readyz")
        head = await c.head("/readyz")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(get.content))
    assert head.headers["content-type"] == CONTENT_TYPE


async def test_other_methods_get_405() -> None:
    async with client(HealthApp(make_registry())) as c:
        resp = await c.post("/readyz")
    assert resp.status_code == 405
    assert resp.headers["allow"] == "GET, HEAD"


async def test_unknown_path_is_404_and_trailing_slash_is_tolerated() -> None:
    async with client(HealthApp(make_registry())) as c:
        assert (await c.get("/nope")).status_code == 404
        assert (await c.get("/readyz/")).status_code == 200


async def test_configurable_paths() -> None:
    app = HealthApp(make_registry(), paths={"/health/live": "liveness", "/ready": "readiness"})
    async with client(app) as c:
        assert (await c.get("/health/live")).status_code == 200
        assert (await c.get("/ready")).json() == {"status": "warn"}
        assert (await c.get("/readyz")).status_code == 404


async def test_details_hidden_without_token() -> None:
    app = HealthApp(make_registry(), token=TOKEN, version="1.2.3", service_id="svc-1")
    async with client(app) as c:
        for headers in (
            {},
            {"authorization": "Bearer wrong"},
            {"authorization": TOKEN},  # no Bearer scheme
            {"authorization": f"Basic {TOKEN}"},
            {"authorization": f"Bearer {TOKEN}x"},
            {"x-health-token": TOKEN},
        ):
            resp = await c.get("/readyz", headers=headers)
            assert resp.json() == {"status": "warn"}, headers
            assert b"pw123" not in resp.content
            assert b"1.2.3" not in resp.content


async def test_details_shown_with_token() -> None:
    app = HealthApp(
        make_registry(),
        token=TOKEN,
        version="1.2.3",
        release_id="1.2.3-abc",
        service_id="svc-1",
        description="orders API",
    )
    async with client(app) as c:
        resp = await c.get("/readyz", headers={"Authorization": f"bearer  {TOKEN} "})
    doc = resp.json()
    validate(doc)
    assert doc["status"] == "warn"
    assert doc["version"] == "1.2.3"
    assert doc["releaseId"] == "1.2.3-abc"
    assert doc["serviceId"] == "svc-1"
    assert doc["description"] == "orders API"
    db = doc["checks"]["postgres:responseTime"][0]
    assert db == {
        "componentType": "datastore",
        "observedValue": 1.25,
        "observedUnit": "ms",
        "status": "pass",
        "time": "2023-11-14T22:13:20.000Z",
    }
    search = doc["checks"]["search:responseTime"][0]
    assert search["status"] == "fail"
    assert "pw123" not in search["output"]
    assert "http://admin:***@search:9200" in search["output"]


async def test_token_in_a_custom_header() -> None:
    app = HealthApp(make_registry(), token=TOKEN, token_header="X-Health-Token")
    async with client(app) as c:
        shown = await c.get("/", headers={"x-health-token": TOKEN})
        hidden = await c.get("/", headers={"authorization": f"Bearer {TOKEN}"})
    assert "checks" in shown.json()
    assert hidden.json() == {"status": "warn"}


async def test_details_enabled_for_everyone() -> None:
    async with client(HealthApp(make_registry(), details=True)) as c:
        doc = (await c.get("/")).json()
    validate(doc)
    assert set(doc["checks"]) == {"eventloop:lag", "postgres:responseTime", "search:responseTime"}


async def test_startup_and_shutdown_bodies_validate() -> None:
    reg = make_registry(started=False)
    app = HealthApp(reg, details=True)
    async with client(app) as c:
        starting = await c.get("/startupz")
        assert starting.status_code == 503
        validate(starting.json())
        assert "mark_started" in starting.json()["output"]
        reg.mark_started()
        assert (await c.get("/startupz")).status_code == 200
        reg.begin_shutdown()
        ready = await c.get("/readyz")
        live = await c.get("/livez")
    assert ready.status_code == 503
    validate(ready.json())
    assert ready.json()["output"].startswith("shutting down")
    assert live.status_code == 200


async def test_every_status_combination_validates() -> None:
    reg = HealthRegistry(clock=ManualClock(), started=True)
    results = [
        CheckResult.passed(),
        CheckResult.passed({"nodes": [1, 2]}, "nodes"),
        CheckResult.warn("slow", 12.5, "ms"),
        CheckResult.fail("down"),
        CheckResult(Status.PASS, "closed", component_id="10.0.0.1:6379"),
    ]
    for i, result in enumerate(results):

        async def check(result: CheckResult = result) -> CheckResult:
            return result

        reg.add(f"c{i}:m", check, critical=i != 3)
    async with client(HealthApp(reg, details=True)) as c:
        for path in ("/", "/readyz", "/livez", "/startupz"):
            validate((await c.get(path)).json())


async def test_rendered_body_is_reused_while_results_are_cached() -> None:
    app = HealthApp(make_registry(), details=True)
    first = await app.respond("/readyz", detailed=True)
    second = await app.respond("/readyz", detailed=True)
    assert first.body is second.body


async def test_lifespan_scope_is_acknowledged_without_opening_anything() -> None:
    app = HealthApp(make_registry())
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    sent: list[dict[str, Any]] = []
    for kind in ("lifespan.startup", "lifespan.shutdown"):
        inbox.put_nowait({"type": kind})

    async def send(message: Any) -> None:
        sent.append(message)

    await app({"type": "lifespan"}, inbox.get, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


def test_bad_configuration() -> None:
    reg = HealthRegistry()
    with pytest.raises(ConfigurationError):
        HealthApp(reg, paths={"readyz": "readiness"})
    with pytest.raises(ConfigurationError):
        HealthApp(reg, token="")
    with pytest.raises(TypeError):
        HealthApp(object())  # type: ignore[arg-type]


async def test_body_is_compact_json() -> None:
    app = HealthApp(make_registry())
    response = await app.respond("/livez")
    assert json.loads(response.body) == {"status": "pass"}
    assert response.body == b'{"status":"pass"}'


async def test_hung_check_answers_503_with_timeout_output() -> None:
    clock = ManualClock()
    reg = HealthRegistry(clock=clock, started=True)

    async def never() -> None:
        await asyncio.Event().wait()

    reg.add("payments:responseTime", never)  # timeout defaults to 1.0 s
    app = HealthApp(reg, details=True)
    probe = asyncio.ensure_future(app.respond("/readyz"))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while clock.sleepers == 0:
        assert loop.time() < deadline
        await asyncio.sleep(0)
    await clock.advance(1.0)
    response = await asyncio.wait_for(probe, 5)
    assert response.status_code == 503
    doc = json.loads(response.body)
    validate(doc)
    entry = doc["checks"]["payments:responseTime"][0]
    assert (entry["status"], entry["output"]) == ("fail", "timed out after 1.0s")


async def test_thousand_concurrent_http_probes_run_each_check_once() -> None:
    reg = HealthRegistry(clock=ManualClock(), started=True)
    gate = asyncio.Event()
    calls = 0

    async def db() -> None:
        nonlocal calls
        calls += 1
        await gate.wait()

    reg.add("postgres:responseTime", db)
    app = HealthApp(reg)
    statuses: list[int] = []

    async def probe() -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        scope = {"type": "http", "method": "GET", "path": "/readyz", "headers": []}
        await app(scope, receive, send)

    probes = [asyncio.ensure_future(probe()) for _ in range(1000)]
    await until(lambda: calls == 1)
    gate.set()
    await asyncio.gather(*probes)
    assert statuses == [200] * 1000
    assert calls == 1
    assert reg.runs("postgres:responseTime") == 1


async def test_hostile_headers_do_not_unlock_details() -> None:
    app = HealthApp(make_registry(), token=TOKEN)
    async with client(app) as c:
        for value in ("Bearer " + "A" * 100_000, "Bearer", "Bearer \u00e9", ""):
            resp = await c.get("/readyz", headers={"authorization": value.encode("utf-8")})
            assert resp.json() == {"status": "warn"}


def test_public_api_is_pinned() -> None:
    import scalekit.health as health

    assert sorted(health.__all__) == sorted(
        [
            "CONTENT_TYPE",
            "DEFAULT_PATHS",
            "LIVENESS",
            "READINESS",
            "STARTUP",
            "BuiltinCheck",
            "Check",
            "CheckOutcome",
            "CheckResult",
            "EventLoopMonitor",
            "HealthApp",
            "HealthLifespan",
            "HealthReport",
            "HealthRegistry",
            "HealthResponse",
            "Status",
            "breaker_state",
            "checks",
            "event_loop_lag",
            "health_lifespan",
            "install_signal_handlers",
            "postgres_query",
            "postgres_replica_lag",
            "rabbitmq_connection",
            "rabbitmq_queue_depth",
            "redis_cluster_state",
            "redis_ping",
            "render",
            "sharded_database",
        ]
    )
    for name in health.__all__:
        assert getattr(health, name) is not None
