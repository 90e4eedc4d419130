"""The per-server connection gate (pure logic, no server): FIFO turns, one shared deadline."""

from __future__ import annotations

import asyncio

import pytest

from scalekit.db._replica import _Server

DSN = "postgresql://u:secret@127.0.0.1:5433/test"


async def test_turns_are_bounded_and_handed_on_in_fifo_order() -> None:
    server = _Server(DSN, "replica", slots=2)
    server.free -= 2  # two holders
    order: list[int] = []

    async def waiter(i: int) -> None:
        await server.wait_turn(30)
        order.append(i)

    tasks = [asyncio.create_task(waiter(i)) for i in range(3)]
    await asyncio.sleep(0)
    assert server.free == 0
    assert len(server.waiters) == 3
    assert order == []
    server.pass_turn()
    server.pass_turn()
    await asyncio.gather(*tasks[:2])
    assert order == [0, 1]
    assert not tasks[2].done()
    server.pass_turn()  # one of the first two is done: the third gets its turn
    await tasks[2]
    assert order == [0, 1, 2]
    for _ in range(2):  # the two holders left (waiters 1 and 2) finish
        server.pass_turn()
    assert server.free == 2


async def test_waiters_time_out_with_a_clear_error_and_one_timer() -> None:
    server = _Server(DSN, "replica", slots=1)
    server.free = 0
    first = asyncio.create_task(server.wait_turn(0.05))
    await asyncio.sleep(0)
    timer = server.timer
    assert timer is not None
    second = asyncio.create_task(server.wait_turn(0.05))
    await asyncio.sleep(0)
    assert server.timer is timer  # the second waiter shares the timer
    with pytest.raises(TimeoutError, match=r"acquire_timeout=0.05s") as info:
        await first
    assert "secret" not in str(info.value)  # the DSN is redacted
    with pytest.raises(TimeoutError):
        await second
    assert not server.waiters
    assert server.timer is None
    assert server.free == 0
    server.pass_turn()  # the holder finishes: its turn becomes free again
    assert server.free == 1


async def test_a_cancelled_waiter_holds_no_turn() -> None:
    server = _Server(DSN, "replica", slots=1)
    server.free = 0
    cancelled = asyncio.create_task(server.wait_turn(30))
    served = asyncio.create_task(server.wait_turn(30))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.sleep(0)
    server.pass_turn()  # skips the cancelled waiter
    await served
    assert cancelled.cancelled()
    assert server.free == 0
    server.pass_turn()
    assert server.free == 1


async def test_a_waiter_cancelled_after_its_turn_was_granted_hands_it_on() -> None:
    server = _Server(DSN, "replica", slots=1)
    server.free = 0
    granted = asyncio.create_task(server.wait_turn(30))
    nxt = asyncio.create_task(server.wait_turn(30))
    await asyncio.sleep(0)
    server.pass_turn()  # granted to the first waiter ...
    granted.cancel()  # ... which is cancelled before it runs
    await asyncio.gather(granted, return_exceptions=True)
    assert granted.cancelled()
    await nxt  # the turn reached the next waiter instead of being lost
    server.pass_turn()
    assert server.free == 1
