"""Disposable server processes the failure tests may stop, restart or kill freely.

The shared services on their default ports are never stopped by a test (other tests, and other
workers of a parallel run, use them); a test that needs to kill Redis starts its own.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def wait_for_port(port: int, *, up: bool = True, timeout: float = 10.0) -> None:
    """Block until ``127.0.0.1:port`` accepts (``up``) or refuses connections."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                if up:
                    return
        except OSError:
            if not up:
                return
        time.sleep(0.02)
    state = "accept" if up else "refuse"
    raise TimeoutError(f"127.0.0.1:{port} did not {state} connections within {timeout}s")


class RedisProcess:
    """A private ``redis-server`` on a free loopback port that a test may stop and restart."""

    def __init__(
        self, workdir: Path, port: int | None = None, extra_args: Sequence[str] = ()
    ) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not on PATH; install Debian's redis-server")
        self.port = port or free_port()
        self.workdir = workdir
        self.extra_args = list(extra_args)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        if self.running:
            return
        self._proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--daemonize",
                "no",
                "--logfile",
                "",
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        """Kill the server (SIGKILL: no graceful goodbye to clients) and wait until it is gone."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=10)
            self._proc = None
            wait_for_port(self.port, up=False)

    def restart(self) -> None:
        """Stop, then start again on the same port (with an empty dataset)."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server if it runs."""
        with contextlib.suppress(Exception):
            self.stop()


def _cli(port: int, *args: str) -> str:
    """Run ``redis-cli -p port args...`` and return its output (raises on failure)."""
    out = subprocess.run(
        ["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=10
    )
    if out.returncode:
        raise RuntimeError(f"redis-cli {' '.join(args)}: {out.stderr or out.stdout}")
    return out.stdout.strip()


def _wait(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if condition():
                return
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not happen within {timeout}s")


class RedisFailoverCluster:
    """A private Redis Cluster: one primary holding all 16,384 slots and one replica of it.

    Tests may fail it over gracefully (:meth:`failover`) or kill the primary and promote the
    replica (:meth:`kill_primary`), as an operator or orchestrator would. The shared cluster on
    7000-7002 has no replicas and is never failed over.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.nodes: list[RedisProcess] = []
        self._attempt = 0

    def _new_nodes(self) -> None:
        args = ["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"]
        args += ["--repl-diskless-sync-delay", "0"]  # a replica syncs at once, not after 5s
        self._attempt += 1
        self.nodes = []
        for name in ("a", "b"):
            workdir = self.workdir / f"{name}{self._attempt}"
            workdir.mkdir(parents=True, exist_ok=True)
            self.nodes.append(RedisProcess(workdir, free_cluster_port(), extra_args=args))

    def start(self) -> None:
        """Start both nodes, give the first every slot, make the second its replica.

        A start that fails (a port taken between choosing and binding it, on a busy machine)
        is retried once on new ports; the second failure says what the nodes reported.
        """
        for attempt in (1, 2):
            self._new_nodes()
            try:
                self._start()
                return
            except (TimeoutError, RuntimeError) as exc:
                report = self._report()
                self.close()
                if attempt == 2:
                    msg = f"the failover cluster did not start: {exc}\n{report}"
                    raise RuntimeError(msg) from exc

    def _report(self) -> str:
        lines = []
        for node in self.nodes:
            try:
                info = _cli(node.port, "INFO", "replication").replace("\r", "")
                state = _cli(node.port, "CLUSTER", "INFO").splitlines()[0]
                lines.append(f"127.0.0.1:{node.port} {state}\n{info}")
            except Exception as exc:
                lines.append(f"127.0.0.1:{node.port} unreachable ({exc})")
        return "\n".join(lines)

    def _start(self) -> None:
        first, second = self.nodes
        for node in self.nodes:
            node.start()
        _cli(first.port, "CLUSTER", "ADDSLOTSRANGE", "0", "16383")
        _cli(second.port, "CLUSTER", "MEET", "127.0.0.1", str(first.port))
        first_id = _cli(first.port, "CLUSTER", "MYID")
        _wait(lambda: first_id in _cli(second.port, "CLUSTER", "NODES"), "cluster meet")
        _cli(second.port, "CLUSTER", "REPLICATE", first_id)
        self.wait_healthy(primary=first.port)

    def role(self, port: int) -> str:
        """``master`` or ``slave`` (Redis's words), from ``ROLE``."""
        return _cli(port, "ROLE").splitlines()[0]

    @property
    def primary(self) -> RedisProcess:
        """The node that is primary now."""
        for node in self.nodes:
            if node.running and self.role(node.port) == "master":
                return node
        raise RuntimeError("no running primary")

    @property
    def replica(self) -> RedisProcess:
        """The other node."""
        primary = self.primary
        return next(node for node in self.nodes if node is not primary)

    def wait_healthy(self, *, primary: int) -> None:
        """Until ``primary`` serves every slot and the other node replicates it, in sync."""
        replica = next(node.port for node in self.nodes if node.port != primary)

        def healthy() -> bool:
            info = _cli(primary, "INFO", "replication")
            return (
                self.role(primary) == "master"
                and "cluster_state:ok" in _cli(primary, "CLUSTER", "INFO")
                and "cluster_state:ok" in _cli(replica, "CLUSTER", "INFO")
                and f"port={replica},state=online" in info
            )

        _wait(healthy, f"127.0.0.1:{primary} primary with an in-sync replica")

    def sync(self) -> None:
        """Wait until the replica has every write the primary has acknowledged."""
        acked = _cli(self.primary.port, "WAIT", "1", "5000")
        if acked != "1":
            raise TimeoutError("the replica did not acknowledge the writes within 5s")

    def failover(self) -> None:
        """A graceful manual failover: the replica takes over, the old primary follows it."""
        new = self.replica
        _cli(new.port, "CLUSTER", "FAILOVER")
        self.wait_healthy(primary=new.port)

    def kill_primary(self) -> RedisProcess:
        """SIGKILL the primary; return it (dead). Call :meth:`promote` to finish the move."""
        dead = self.primary
        dead.stop()
        return dead

    def promote(self, dead: RedisProcess, *, restart: bool = True) -> None:
        """Promote the surviving replica (``TAKEOVER``: the primary cannot vote), then bring
        the dead node back as its replica, empty; ``restart=False`` leaves it dead for good
        (a replaced node: its address never answers again)."""
        survivor = next(node for node in self.nodes if node is not dead)
        _cli(survivor.port, "CLUSTER", "FAILOVER", "TAKEOVER")
        _wait(lambda: self.role(survivor.port) == "master", "takeover")
        if not restart:
            _wait(lambda: "cluster_state:ok" in _cli(survivor.port, "CLUSTER", "INFO"), "ok")
            return
        dead.start()  # restarts with its old nodes.conf: it rejoins and follows the new primary
        self.wait_healthy(primary=survivor.port)

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """Both nodes, as a cluster client's startup nodes."""
        return [("127.0.0.1", node.port) for node in self.nodes]

    def close(self) -> None:
        """Stop both nodes."""
        for node in self.nodes:
            node.close()
