"""``python -m scalekit.queue`` against the real RabbitMQ."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest

from scalekit.queue import Consumer, DeadLetters, Message, Producer, RabbitMQBroker, RetryPolicy
from tests.queue.conftest import wait_for

pytestmark = pytest.mark.rabbitmq


async def _cli(*args: str) -> tuple[int, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "scalekit.queue",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def test_cli_lists_and_replays_dead_letters(
    rabbit: RabbitMQBroker, amqp_url: str, unique: str
) -> None:
    queue = f"{unique}.cli"
    producer = Producer(rabbit)
    await producer.declare(queue)
    consumer = Consumer(rabbit, retry=RetryPolicy(max_attempts=1))
    broken = {"on": True}
    done: list[str] = []

    @consumer.handler(queue)
    async def handle(message: Message[dict[str, str]]) -> None:
        if broken["on"]:
            raise LookupError(message.body["k"])
        done.append(message.body["k"])

    async with consumer:
        await producer.publish({"k": "a"}, queue=queue, message_id="cli-a")
        await producer.publish({"k": "b"}, queue=queue, message_id="cli-b")
        letters = DeadLetters(rabbit, queue)
        await wait_for(lambda: _count(letters, 2))
        base = ["--url", amqp_url, "--exchange", unique]
        code, out = await _cli(*base, "dlq", "list", queue)
        assert code == 0, out
        rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert {r["message_id"] for r in rows} == {"cli-a", "cli-b"}
        assert all(r["reason"] == "failed" for r in rows)
        broken["on"] = False
        code, out = await _cli(
            *base, "dlq", "replay", queue, "--message-id", "cli-b", "--rate", "100"
        )
        assert code == 0 and "replayed 1" in out, out  # noqa: PT018
        await wait_for(lambda: done == ["b"])
        code, out = await _cli(*base, "depth", f"{queue}.dlq")
        assert json.loads(out)["messages"] == 1


async def _count(letters: DeadLetters, n: int) -> bool:
    return await letters.count() == n


async def test_cli_reports_unreachable_broker_cleanly(unique: str) -> None:
    from tests.support.processes import free_port

    code, out = await _cli(
        "--url",
        f"amqp://u:secret@127.0.0.1:{free_port()}/",
        "--connect-timeout",
        "0.5",
        "dlq",
        "count",
        "q",
    )
    assert code == 1
    assert "error:" in out
    assert "secret" not in out
