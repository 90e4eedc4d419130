"""Confirmed publishing and safe consuming over RabbitMQ, with retries, dead letters and an outbox.

Coming: this primitive is being built.
"""

from __future__ import annotations

__all__: list[str] = []
