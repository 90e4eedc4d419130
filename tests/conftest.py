"""Fixtures shared by the whole suite: real services, unique names, disposable servers."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import services
from tests.support.processes import RedisProcess

pytest_plugins = ["pytester"]


def _resolve(spec: services.ServiceSpec, container: Callable[[], str | None] | None) -> str:
    try:
        return services.resolve(spec, container=container)
    except services.ServiceMissing as exc:
        if services.services_required():
            pytest.fail(f"{exc} ({services.REQUIRE_ENV}=1 makes this an error)", pytrace=False)
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of a real Redis server (see tests/support/services.py for how it is found)."""
    return _resolve(services.REDIS, services.redis_container)


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """DSN of a real PostgreSQL server whose role may create databases and schemas."""
    return _resolve(services.POSTGRES, services.postgres_container)


@pytest.fixture(scope="session")
def postgres_replica_dsn(postgres_dsn: str) -> str:
    """DSN of a streaming replica of ``postgres_dsn`` (``scripts/services.sh up``)."""
    return _resolve(services.POSTGRES_REPLICA, None)


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """URL of a real RabbitMQ broker."""
    return _resolve(services.RABBITMQ, services.rabbitmq_container)


@pytest.fixture(scope="session")
def redis_cluster_nodes() -> list[tuple[str, int]]:
    """Startup nodes of the local 3-master Redis Cluster (``scripts/services.sh up``)."""
    raw = _resolve(services.REDIS_CLUSTER, None)
    nodes = []
    for item in raw.split(","):
        host, _, port = item.strip().rpartition(":")
        nodes.append((host or "127.0.0.1", int(port)))
    return nodes


@pytest.fixture
def unique() -> str:
    """A short name unique to this test run, for key prefixes, queues, schemas and databases."""
    return f"sktest_{os.getpid()}_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def redis_process(tmp_path: Path) -> Iterator[RedisProcess]:
    """A private, running redis-server the test may stop, kill and restart."""
    proc = RedisProcess(tmp_path)
    proc.start()
    try:
        yield proc
    finally:
        proc.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    services.stop_containers()
