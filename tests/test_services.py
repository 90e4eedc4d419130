"""How the suite resolves its services: env var, loopback port, container, skip or error."""

from __future__ import annotations

import socket

import pytest

from tests.support import services
from tests.support.services import ServiceMissing, ServiceSpec, resolve

SPEC = ServiceSpec("Thing", "SCALEKIT_TEST_THING_URL", "thing://127.0.0.1:1/", "start a thing")


def _never(host: str, port: int) -> bool:
    return False


def test_environment_variable_wins() -> None:
    url = resolve(SPEC, environ={"SCALEKIT_TEST_THING_URL": "thing://elsewhere/"}, probe=_never)
    assert url == "thing://elsewhere/"


def test_loopback_port_answering() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        spec = ServiceSpec("Thing", "X_UNSET", f"thing://127.0.0.1:{port}/", "hint")
        assert resolve(spec, environ={}) == f"thing://127.0.0.1:{port}/"


def test_container_when_nothing_answers() -> None:
    url = resolve(SPEC, environ={}, probe=_never, container=lambda: "thing://container/")
    assert url == "thing://container/"


def test_missing_service_says_how_to_provide_it() -> None:
    with pytest.raises(ServiceMissing) as info:
        resolve(SPEC, environ={}, probe=_never, container=lambda: None)
    message = str(info.value)
    assert "SCALEKIT_TEST_THING_URL" in message
    assert "start a thing" in message


@pytest.mark.parametrize(
    ("value", "required"), [("1", True), ("true", True), ("", False), ("0", False)]
)
def test_require_switch(value: str, required: bool) -> None:
    assert services.services_required({"SCALEKIT_REQUIRE_SERVICES": value}) is required


def test_skip_or_fail_depends_on_the_require_switch(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest(
        """
import pytest
from tests.support import services

SPEC = services.ServiceSpec("Thing", "SCALEKIT_TEST_THING_URL", "thing://127.0.0.1:1/", "start it")

@pytest.fixture
def thing_url():
    try:
        return services.resolve(SPEC, probe=lambda h, p: False)
    except services.ServiceMissing as exc:
        if services.services_required():
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))
"""
    )
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile("def test_uses(thing_url):\n    assert thing_url\n")
    pytester.syspathinsert(str(services.__file__).rsplit("/tests/", 1)[0])
    monkeypatch.delenv("SCALEKIT_TEST_THING_URL", raising=False)
    monkeypatch.delenv("SCALEKIT_REQUIRE_SERVICES", raising=False)
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(skipped=1)
    monkeypatch.setenv("SCALEKIT_REQUIRE_SERVICES", "1")
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(errors=1)
    monkeypatch.setenv("SCALEKIT_TEST_THING_URL", "thing://from-env/")
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_real_services_resolve(redis_url: str, postgres_dsn: str, amqp_url: str) -> None:
    assert redis_url.startswith("redis")
    assert postgres_dsn.startswith("postgres")
    assert amqp_url.startswith("amqp")
