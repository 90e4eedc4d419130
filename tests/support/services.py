"""How the test suite finds the real services it runs against.

Each service resolves, in order: an environment variable; the service answering on its default
loopback port; a testcontainers container when a Docker engine answers; otherwise the test is
skipped with a reason saying how to provide the service. With ``SCALEKIT_REQUIRE_SERVICES=1``
(set by ``.ci/run``) a missing service is an error, never a skip.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

REQUIRE_ENV = "SCALEKIT_REQUIRE_SERVICES"


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """What the suite needs to know to find one service."""

    name: str
    env_var: str
    default_url: str
    hint: str


REDIS = ServiceSpec(
    "Redis",
    "SCALEKIT_TEST_REDIS_URL",
    "redis://127.0.0.1:6379/0",
    "start redis-server on 127.0.0.1:6379 or set SCALEKIT_TEST_REDIS_URL",
)
POSTGRES = ServiceSpec(
    "PostgreSQL",
    "SCALEKIT_TEST_POSTGRES_DSN",
    "postgresql://postgres@127.0.0.1:5432/test",
    "start PostgreSQL on 127.0.0.1:5432 or set SCALEKIT_TEST_POSTGRES_DSN",
)
POSTGRES_REPLICA = ServiceSpec(
    "PostgreSQL streaming replica",
    "SCALEKIT_TEST_POSTGRES_REPLICA_DSN",
    "postgresql://postgres@127.0.0.1:5433/test",
    "run `scripts/services.sh up` or set SCALEKIT_TEST_POSTGRES_REPLICA_DSN",
)
RABBITMQ = ServiceSpec(
    "RabbitMQ",
    "SCALEKIT_TEST_AMQP_URL",
    "amqp://guest:guest@127.0.0.1:5672/",
    "start rabbitmq-server on 127.0.0.1:5672 or set SCALEKIT_TEST_AMQP_URL",
)
REDIS_CLUSTER = ServiceSpec(
    "Redis Cluster",
    "SCALEKIT_TEST_REDIS_CLUSTER_NODES",
    "127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002",
    "run `scripts/services.sh up` or set SCALEKIT_TEST_REDIS_CLUSTER_NODES=host:port,...",
)


class ServiceMissing(Exception):
    """The service could not be found; the message says how to provide it."""


def services_required(environ: dict[str, str] | os._Environ[str] | None = None) -> bool:
    """Whether a missing service must fail the run instead of skipping the test."""
    env = os.environ if environ is None else environ
    return env.get(REQUIRE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections at ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def docker_engine_answers() -> bool:
    """Whether a Docker engine answers (so testcontainers can start a container)."""
    sock = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if sock.startswith("unix://"):
        path = sock.removeprefix("unix://")
        if not os.path.exists(path):
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            try:
                s.connect(path)
            except OSError:
                return False
            return True
    return False


def _host_port(url: str) -> tuple[str, int]:
    first = url.split(",")[0]
    if "://" not in first:
        first = f"tcp://{first}"
    parts = urlsplit(first)
    return parts.hostname or "127.0.0.1", parts.port or 0


def resolve(
    spec: ServiceSpec,
    *,
    environ: dict[str, str] | os._Environ[str] | None = None,
    probe: Callable[[str, int], bool] = port_answers,
    container: Callable[[], str | None] | None = None,
) -> str:
    """Find ``spec``'s URL, or raise :class:`ServiceMissing` with a reason saying what to do.

    Args:
        spec: the service.
        environ: the environment to read (default ``os.environ``).
        probe: checks that a host and port answer.
        container: starts a container and returns its URL, or ``None`` when no engine answers.
    """
    env = os.environ if environ is None else environ
    explicit = env.get(spec.env_var)
    if explicit:
        return explicit
    host, port = _host_port(spec.default_url)
    if probe(host, port):
        return spec.default_url
    if container is not None:
        url = container()
        if url:
            return url
    raise ServiceMissing(
        f"{spec.name} is not available: nothing answers on {host}:{port}, "
        f"{spec.env_var} is not set and no Docker engine answers. To run these tests, {spec.hint}."
    )


def redis_container() -> str | None:
    """Start a Redis container with testcontainers when a Docker engine answers."""
    if not docker_engine_answers():
        return None
    from testcontainers.redis import RedisContainer

    c = RedisContainer("redis:7-alpine")
    c.start()
    _CONTAINERS.append(c)
    return f"redis://{c.get_container_host_ip()}:{c.get_exposed_port(6379)}/0"


def postgres_container() -> str | None:
    """Start a PostgreSQL container with testcontainers when a Docker engine answers."""
    if not docker_engine_answers():
        return None
    from testcontainers.postgres import PostgresContainer

    c = PostgresContainer("postgres:16-alpine", driver=None)
    c.start()
    _CONTAINERS.append(c)
    return str(c.get_connection_url())


def rabbitmq_container() -> str | None:
    """Start a RabbitMQ container with testcontainers when a Docker engine answers."""
    if not docker_engine_answers():
        return None
    from testcontainers.rabbitmq import RabbitMqContainer

    c = RabbitMqContainer("rabbitmq:3.13-alpine")
    c.start()
    _CONTAINERS.append(c)
    return f"amqp://guest:guest@{c.get_container_host_ip()}:{c.get_exposed_port(5672)}/"


_CONTAINERS: list[object] = []


def stop_containers() -> None:
    """Stop every container this run started."""
    while _CONTAINERS:
        c = _CONTAINERS.pop()
        with contextlib.suppress(Exception):
            c.stop()  # type: ignore[attr-defined]
