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
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not on PATH; install Debian's redis-server")
        self.port = port or free_port()
        self.workdir = workdir
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
