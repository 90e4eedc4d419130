"""``python -m scalekit.queue``: inspect and replay dead letters, read queue depth.

Examples::

    python -m scalekit.queue --url amqp://localhost/ depth resize-images
    python -m scalekit.queue --url amqp://localhost/ dlq list resize-images --limit 20
    python -m scalekit.queue --url amqp://localhost/ dlq replay resize-images \\
        --error-contains Timeout --rate 50
    python -m scalekit.queue --url amqp://localhost/ dlq purge resize-images --reason undecodable

The URL defaults to the ``AMQP_URL`` environment variable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence

from scalekit._redact import redact_text
from scalekit.queue.deadletter import DeadLetter, DeadLetters
from scalekit.queue.rabbitmq import RabbitMQBroker

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m scalekit.queue", description=__doc__.split("\n")[0])
    p.add_argument("--url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1/"))
    p.add_argument("--exchange", default="scalekit")
    p.add_argument("--connect-timeout", type=float, default=5.0, help="seconds")
    sub = p.add_subparsers(dest="command", required=True)
    depth = sub.add_parser("depth", help="ready messages and consumers of a queue")
    depth.add_argument("queue")
    dlq = sub.add_parser("dlq", help="dead-letter queue operations")
    dsub = dlq.add_subparsers(dest="action", required=True)
    for name, text in (
        ("list", "show dead letters (they stay in the queue)"),
        ("replay", "send dead letters back to their queue"),
        ("purge", "delete dead letters"),
        ("count", "how many dead letters"),
    ):
        a = dsub.add_parser(name, help=text)
        a.add_argument("queue")
        if name != "count":
            a.add_argument("--limit", type=int, default=100 if name == "list" else None)
            a.add_argument("--error-contains", default=None)
            a.add_argument("--reason", default=None)
            a.add_argument("--message-id", action="append", default=None)
        if name == "replay":
            a.add_argument("--rate", type=float, default=None, help="messages per second")
    return p


def _filter(args: argparse.Namespace) -> object:
    def where(letter: DeadLetter) -> bool:
        if args.error_contains and args.error_contains not in (letter.error or ""):
            return False
        if args.reason and letter.reason != args.reason:
            return False
        return not (args.message_id and letter.message_id not in args.message_id)

    return where


async def _run(args: argparse.Namespace) -> int:
    async with RabbitMQBroker(
        args.url, exchange=args.exchange, connect_timeout=args.connect_timeout
    ) as broker:
        if args.command == "depth":
            stats = await broker.queue_stats(args.queue)
            print(
                json.dumps(
                    {"queue": stats.name, "messages": stats.messages, "consumers": stats.consumers}
                )
            )
            return 0
        letters = DeadLetters(broker, args.queue)
        if args.action == "count":
            print(await letters.count())
            return 0
        where = _filter(args)
        if args.action == "list":
            for letter in await letters.inspect(limit=args.limit, where=where):  # type: ignore[arg-type]
                print(
                    json.dumps(
                        {
                            "message_id": letter.message_id,
                            "reason": letter.reason,
                            "error": letter.error,
                            "attempts": letter.attempts,
                            "routing_key": letter.routing_key,
                            "dead_lettered_at": letter.dead_lettered_at,
                            "body": letter.body.decode("utf-8", "replace")[:500],
                        }
                    )
                )
            return 0
        if args.action == "replay":
            n = await letters.replay(where=where, limit=args.limit, rate=args.rate)  # type: ignore[arg-type]
            print(f"replayed {n}")
            return 0
        n = await letters.purge(where=where, limit=args.limit)  # type: ignore[arg-type]
        print(f"purged {n}")
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m scalekit.queue``; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except Exception as exc:
        print(f"error: {redact_text(str(exc))}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
