"""A circuit breaker opens on a failure rate, rejects at once, probes, and closes again."""

import asyncio
import contextlib

from scalekit.errors import CircuitOpenError
from scalekit.resilience import BreakerState, CircuitBreaker, CountWindow, StateChange
from scalekit.testing import ManualClock


class PaymentGatewayError(Exception):
    """What our (pretend) payment client raises when the gateway answers 5xx."""


gateway_up = False


async def charge(order_id: str) -> str:
    if not gateway_up:
        raise PaymentGatewayError(f"503 for {order_id}")
    return f"receipt-{order_id}"


async def main() -> None:
    clock = ManualClock()  # production code leaves clock= out; the example controls time
    breaker = CircuitBreaker(
        "payments",
        window=CountWindow(20),  # judge on the last 20 calls
        minimum_calls=5,  # ...once there are at least 5
        failure_rate_threshold=0.5,
        open_duration=30.0,
        half_open_max_calls=2,
        record=PaymentGatewayError,
        clock=clock,
    )
    changes: list[StateChange] = []
    breaker.add_listener(changes.append)

    # 1. the gateway fails: after 5 calls at 100% failures the breaker opens
    for i in range(5):
        with contextlib.suppress(PaymentGatewayError):
            await breaker.call(charge, f"o{i}")
    assert breaker.state is BreakerState.OPEN

    # 2. open: calls are rejected without touching the gateway, with a retry hint
    rejected: CircuitOpenError | None = None
    try:
        await breaker.call(charge, "o6")
    except CircuitOpenError as exc:
        rejected = exc
    assert rejected is not None
    assert rejected.name == "payments"
    assert rejected.retry_after == 30.0

    # 3. after open_duration, exactly 2 trial calls decide; they succeed, so it closes
    global gateway_up
    gateway_up = True
    await clock.advance(30.0)
    assert breaker.state is BreakerState.HALF_OPEN
    assert await breaker.call(charge, "o7") == "receipt-o7"
    assert await breaker.call(charge, "o8") == "receipt-o8"
    assert breaker.state is BreakerState.CLOSED

    snap = breaker.snapshot()
    print(snap)
    assert snap.total_rejected == 1
    assert snap.total_failures == 5
    print([f"{c.previous.value}->{c.current.value}" for c in changes])
    assert [c.current for c in changes] == [
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.CLOSED,
    ]


asyncio.run(main())
