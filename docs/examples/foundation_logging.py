"""Structured JSON logs from scalekit's loggers, with redacted connection strings."""

from __future__ import annotations

import io
import json
import logging

from scalekit.logging import JsonFormatter

stream = io.StringIO()
handler = logging.StreamHandler(stream)
handler.setFormatter(JsonFormatter(static_fields={"service": "api"}))
logger = logging.getLogger("scalekit")
logger.addHandler(handler)
logger.setLevel(logging.INFO)

logging.getLogger("scalekit.cache").warning(
    "redis unreachable at %s, serving misses", "redis://:hunter2@cache:6379/0"
)

line = json.loads(stream.getvalue())
print(line)
assert line["service"] == "api"
assert line["logger"] == "scalekit.cache"
assert "hunter2" not in line["message"]
