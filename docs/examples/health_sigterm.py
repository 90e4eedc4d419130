"""Drain on SIGTERM: readiness fails at once; the server's own handler runs after the delay."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from scalekit.health import HealthRegistry, install_signal_handlers


async def main() -> None:
    loop = asyncio.get_running_loop()
    server_stopping = asyncio.Event()
    # Stand-in for the server's handler (uvicorn's stops accepting connections).
    signal.signal(signal.SIGTERM, lambda *_: loop.call_soon_threadsafe(server_stopping.set))

    registry = HealthRegistry(started=True)
    restore = install_signal_handlers(registry, drain_delay=0.3)
    try:
        sent = time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)  # what Kubernetes sends
        for _ in range(100):  # the handler flips readiness on the loop's next iteration
            if registry.shutting_down:
                break
            await asyncio.sleep(0)
        assert registry.shutting_down
        assert (await registry.run("readiness")).status.value == "fail"
        assert (await registry.run("liveness")).status.value == "pass"
        assert not server_stopping.is_set()  # still serving while load balancers catch up
        await asyncio.wait_for(server_stopping.wait(), 5)
        print(f"server handler ran {time.monotonic() - sent:.2f}s after SIGTERM")
    finally:
        restore()
    print("ok")


if __name__ == "__main__":
    asyncio.run(main())
