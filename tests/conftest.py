"""Fixtures shared by the whole suite: real services, unique names, disposable servers."""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import services
from tests.support.collect import imports_missing_module
from tests.support.processes import RedisFailoverCluster, RedisProcess

pytest_plugins = ["pytester"]


# In the no-extras run (``make test-no-extras``) redis, asyncpg and aio-pika are not installed:
# test modules that import a missing package are not collected, and the service fixtures skip,
# so what runs is the pure logic, proving it works without the drivers.
NO_EXTRAS = os.environ.get("SCALEKIT_NO_EXTRAS") == "1"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if not NO_EXTRAS:
        return None
    if collection_path.is_dir():
        conftest = collection_path / "conftest.py"
        return True if conftest.exists() and imports_missing_module(conftest) else None
    if collection_path.suffix == ".py" and imports_missing_module(collection_path):
        return True
    return None


def _resolve(
    spec: services.ServiceSpec,
    container: Callable[[], str | None] | None,
    driver: str | None = None,
) -> str:
    if driver is not None and importlib.util.find_spec(driver) is None:
        pytest.skip(f"{driver} is not installed (the no-extras run tests pure logic only)")
    try:
        return services.resolve(spec, container=container)
    except services.ServiceMissing as exc:
        if services.services_required():
            pytest.fail(f"{exc} ({services.REQUIRE_ENV}=1 makes this an error)", pytrace=False)
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of a real Redis server (see tests/support/services.py for how it is found)."""
    return _resolve(services.REDIS, services.redis_container, "redis")


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """DSN of a real PostgreSQL server whose role may create databases and schemas."""
    return _resolve(services.POSTGRES, services.postgres_container, "asyncpg")


@pytest.fixture(scope="session")
def postgres_replica_dsn(postgres_dsn: str) -> str:
    """DSN of a streaming replica of ``postgres_dsn`` (``scripts/services.sh up``)."""
    return _resolve(services.POSTGRES_REPLICA, None, "asyncpg")


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """URL of a real RabbitMQ broker."""
    return _resolve(services.RABBITMQ, services.rabbitmq_container, "aio_pika")


@pytest.fixture(scope="session")
def redis_cluster_nodes() -> list[tuple[str, int]]:
    """Startup nodes of the local 3-master Redis Cluster (``scripts/services.sh up``)."""
    raw = _resolve(services.REDIS_CLUSTER, None, "redis")
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
    if importlib.util.find_spec("redis") is None:
        pytest.skip("redis is not installed (the no-extras run tests pure logic only)")
    proc = RedisProcess(tmp_path)
    proc.start()
    try:
        yield proc
    finally:
        proc.close()


@pytest.fixture
def redis_failover_cluster(tmp_path: Path) -> Iterator[RedisFailoverCluster]:
    """A private Redis Cluster (one primary with every slot, one replica) to fail over."""
    if importlib.util.find_spec("redis") is None:
        pytest.skip("redis is not installed (the no-extras run tests pure logic only)")
    cluster = RedisFailoverCluster(tmp_path)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


# Tests that use the streaming replica share it: some pause its WAL replay, which makes it lag
# for everyone else. They all run on one xdist worker, one after another (--dist loadgroup).
REPLICA_GROUP = "replica_replay"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        uses_replica = "postgres_replica_dsn" in getattr(item, "fixturenames", ())
        if uses_replica and item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(REPLICA_GROUP))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    services.stop_containers()
