"""Wire startup and shutdown to the registry: ASGI lifespan, framework lifespans, SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from types import FrameType
from typing import Any

from scalekit._telemetry import get_logger
from scalekit.clock import SYSTEM_CLOCK, Clock
from scalekit.errors import ConfigurationError
from scalekit.health.app import Receive, Scope, Send
from scalekit.health.registry import HealthRegistry

__all__ = ["HealthLifespan", "health_lifespan", "install_signal_handlers"]

_log = get_logger(__name__)

ASGIApp = Callable[[Scope, Receive, Send], Any]


def _delay(drain_delay: float) -> float:
    if isinstance(drain_delay, bool) or not isinstance(drain_delay, int | float):
        raise TypeError(f"drain_delay must be seconds, got {drain_delay!r}")
    if not drain_delay >= 0 or drain_delay == float("inf"):
        raise ConfigurationError(f"drain_delay must be a finite number >= 0, got {drain_delay!r}")
    return float(drain_delay)


class HealthLifespan:
    """ASGI middleware: ``mark_started()`` after the app's startup, ``begin_shutdown()`` first.

    Wrap the outermost application (the one the server runs); it works with any ASGI framework::

        app = HealthLifespan(FastAPI(lifespan=my_lifespan), registry, drain_delay=5.0)

    When the server sends ``lifespan.shutdown``, readiness fails at once, then the middleware
    waits ``drain_delay`` seconds before the app's own shutdown closes its pools, so work in
    flight (and probes still coming) see a consistent state.

    Args:
        app: the ASGI application to wrap.
        registry: the health registry to drive.
        drain_delay: seconds to wait after flipping readiness, before the app shuts down.
        clock: the clock ``drain_delay`` is waited on.
    """

    def __init__(
        self,
        app: ASGIApp,
        registry: HealthRegistry,
        *,
        drain_delay: float = 0.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.app = app
        self.registry = registry
        self.drain_delay = _delay(drain_delay)
        self._clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Forward every scope; watch the lifespan messages on the way."""
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def watched_receive() -> Any:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                self.registry.begin_shutdown()
                if self.drain_delay:
                    await self._clock.sleep(self.drain_delay)
            return message

        async def watched_send(message: Any) -> None:
            if message["type"] == "lifespan.startup.complete":
                self.registry.mark_started()
            await send(message)

        await self.app(scope, watched_receive, watched_send)


def health_lifespan(
    registry: HealthRegistry,
    inner: Callable[[Any], AbstractAsyncContextManager[Any]] | None = None,
    *,
    drain_delay: float = 0.0,
    clock: Clock = SYSTEM_CLOCK,
) -> Callable[[Any], AbstractAsyncContextManager[Any]]:
    """A lifespan for Starlette, FastAPI (``lifespan=``) and Litestar (``lifespan=[...]``).

    Runs ``inner`` (the application's own lifespan, which opens pools), then marks the
    registry started; on shutdown it fails readiness first, waits ``drain_delay``, and only
    then lets ``inner`` close its resources::

        app = FastAPI(lifespan=health_lifespan(registry, my_lifespan, drain_delay=5.0))

    Args:
        registry: the health registry to drive.
        inner: the application's lifespan (``app -> async context manager``), if any.
        drain_delay: seconds to wait after flipping readiness, before ``inner`` shuts down.
        clock: the clock ``drain_delay`` is waited on.

    Returns:
        A callable taking the app and returning an async context manager (it yields what
        ``inner`` yields, so Starlette lifespan state passes through).
    """
    delay = _delay(drain_delay)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[Any]:
        async with contextlib.AsyncExitStack() as stack:
            state = None if inner is None else await stack.enter_async_context(inner(app))
            registry.mark_started()
            try:
                yield state
            finally:
                registry.begin_shutdown()
                if delay:
                    await clock.sleep(delay)

    return lifespan


def install_signal_handlers(
    registry: HealthRegistry,
    *,
    drain_delay: float = 0.0,
    signals: Iterable[signal.Signals] = (signal.SIGTERM,),
    clock: Clock = SYSTEM_CLOCK,
) -> Callable[[], None]:
    """On SIGTERM: fail readiness at once, wait ``drain_delay``, then do what was done before.

    Kubernetes sends SIGTERM and removes the pod from its Service at the same time, and load
    balancers need a few probe periods to notice; servers such as uvicorn stop accepting as
    soon as they see the signal. This handler fails readiness first and passes the signal on
    to the previously installed handler (the server's, or the default: exit) only after
    ``drain_delay`` seconds. Call it from the main thread with the loop running (for example
    in the lifespan startup, after the server installed its own handlers).

    Args:
        registry: the health registry to drive.
        drain_delay: seconds between flipping readiness and forwarding the signal.
        signals: the signals to intercept.
        clock: the clock the delay is waited on.

    Returns:
        A function that restores the previous handlers.

    Raises:
        RuntimeError: no event loop is running.
        ValueError: not called from the main thread (a limitation of :mod:`signal`).
    """
    delay = _delay(drain_delay)
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {}
    tasks: set[asyncio.Task[None]] = set()

    def forward(signum: int, frame: FrameType | None) -> None:
        prev = previous.get(signum)
        if callable(prev):
            prev(signum, frame)
        elif prev == signal.SIG_IGN:
            return
        else:  # the default action (or a handler set outside Python): re-deliver it
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    async def later(signum: int, frame: FrameType | None) -> None:
        if delay:
            await clock.sleep(delay)
        forward(signum, frame)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if registry.shutting_down and tasks:  # a second signal: stop waiting
            forward(signum, frame)
            return
        registry.begin_shutdown()
        _log.info("health: signal %s: readiness fails now, draining %.1fs", signum, delay)
        task = loop.create_task(later(signum, frame))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def handler(signum: int, frame: FrameType | None) -> None:
        # Runs between two bytecodes of the main thread: do nothing here that may re-enter
        # logging or I/O; the loop flips readiness on its next iteration.
        loop.call_soon_threadsafe(on_signal, signum, frame)

    for sig in signals:
        previous[int(sig)] = signal.signal(sig, handler)

    def restore() -> None:
        for signum, prev in previous.items():
            signal.signal(signum, prev if prev is not None else signal.SIG_DFL)
        for task in tasks:
            task.cancel()

    return restore
