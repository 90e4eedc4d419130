"""Redact secrets from connection strings before they reach a repr, a log line or an error."""

from __future__ import annotations

import re
from urllib.parse import SplitResult, urlsplit, urlunsplit

__all__ = ["REDACTED", "redact_text", "redact_url"]

REDACTED = "***"

# user:password@ inside any scheme://... in free text
_USERINFO = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@\s]*)@"
)
# libpq keyword form: password=secret or password='se cret'
_KEYWORD = re.compile(r"(?P<key>\bpassword\s*=\s*)(?P<val>'(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
# query-string secrets: ?password=..., &token=...
_QUERY = re.compile(
    r"(?P<key>[?&](?:password|passwd|pwd|secret|token|access_token|api_key|apikey)=)(?P<val>[^&#\s]*)",
    re.IGNORECASE,
)


def redact_url(url: str) -> str:
    """Return ``url`` with its password (and secret query parameters) replaced by ``***``.

    Works for ``redis://``, ``rediss://``, ``postgresql://``, ``amqp://`` and any other
    ``scheme://user:password@host`` form, and for libpq ``key=value`` strings. A string that
    is not a URL is returned with any embedded secrets redacted.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    if not parts.scheme or parts.password is None:
        return redact_text(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{parts.username or ''}:{REDACTED}@{host}"
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is not None:
        netloc += f":{port}"
    redacted = SplitResult(parts.scheme, netloc, parts.path, parts.query, parts.fragment)
    return redact_text(urlunsplit(redacted))


def redact_text(text: str) -> str:
    """Redact every credential found in free text (error messages, log lines, DSN lists)."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", text)
    text = _KEYWORD.sub(lambda m: f"{m['key']}{REDACTED}", text)
    return _QUERY.sub(lambda m: f"{m['key']}{REDACTED}", text)
