"""``HealthApp``: the probes as a pure ASGI app serving ``application/health+json``."""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from scalekit._redact import redact_text
from scalekit.errors import ConfigurationError
from scalekit.health._model import CheckOutcome, HealthReport
from scalekit.health.registry import LIVENESS, READINESS, STARTUP, HealthRegistry

__all__ = ["CONTENT_TYPE", "DEFAULT_PATHS", "HealthApp", "HealthResponse", "render"]

CONTENT_TYPE = "application/health+json"
"""The media type of draft-inadarei-api-health-check-06."""

DEFAULT_PATHS: Mapping[str, str | None] = {
    "/livez": LIVENESS,
    "/readyz": READINESS,
    "/startupz": STARTUP,
    "/": None,
}
"""Path -> group served by default (``None`` means every check)."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def _raw_headers(length: int) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", CONTENT_TYPE.encode()),
        (b"cache-control", b"no-store"),
        (b"content-length", str(length).encode()),
    ]


_NOT_FOUND = b'{"status":"fail","output":"not found"}'
_Answer = tuple[int, list[tuple[bytes, bytes]], bytes]
_NOT_FOUND_ANSWER: _Answer = (404, _raw_headers(len(_NOT_FOUND)), _NOT_FOUND)


@dataclass(frozen=True, slots=True)
class HealthResponse:
    """A framework-neutral HTTP response (what adapters turn into their own response type).

    Attributes:
        status_code: 200 for pass and warn, 503 for fail (404/405 for bad requests).
        headers: header pairs, lower-case names.
        body: the encoded body (send nothing for HEAD).
    """

    status_code: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _check_json(outcome: CheckOutcome) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if outcome.component_id is not None:
        item["componentId"] = outcome.component_id
    if outcome.component_type is not None:
        item["componentType"] = outcome.component_type
    if outcome.observed_value is not None:
        item["observedValue"] = outcome.observed_value
        if outcome.observed_unit is not None:
            item["observedUnit"] = outcome.observed_unit
    item["status"] = outcome.status.value
    item["time"] = _iso(outcome.time)
    if outcome.output is not None and outcome.status.value != "pass":
        item["output"] = outcome.output  # the draft: output SHOULD be omitted for pass
    return item


def render(
    report: HealthReport,
    *,
    details: bool,
    version: str | None = None,
    release_id: str | None = None,
    service_id: str | None = None,
    description: str | None = None,
    notes: Iterable[str] = (),
) -> dict[str, Any]:
    """The health+json document for ``report``.

    Without ``details`` only ``{"status": ...}`` is returned: public probes leak nothing.

    Args:
        report: the aggregated report.
        details: include service metadata, per-check entries and outputs.
        version: the service's public version (``version``).
        release_id: the release or build identifier (``releaseId``).
        service_id: the service's unique identifier (``serviceId``).
        description: a human description of the service (``description``).
        notes: free-form notes (``notes``).

    Returns:
        A JSON-serialisable dict following draft-inadarei-api-health-check-06.
    """
    doc: dict[str, Any] = {"status": report.status.value}
    if not details:
        return doc
    for key, value in (
        ("version", version),
        ("releaseId", release_id),
        ("serviceId", service_id),
        ("description", description),
    ):
        if value is not None:
            doc[key] = value
    notes = list(notes)
    if notes:
        doc["notes"] = notes
    if report.output is not None and report.status.value != "pass":
        doc["output"] = redact_text(report.output)
    if report.checks:
        doc["checks"] = {c.name: [_check_json(c)] for c in report.checks}
    return doc


class HealthApp:
    """The probes as a pure ASGI app: mount it under any prefix of any ASGI framework.

    Serves ``/livez``, ``/readyz``, ``/startupz`` and ``/`` (every check) by default, as
    ``application/health+json`` with ``Cache-Control: no-store``; 200 for pass and warn, 503
    for fail; ``GET`` and ``HEAD``. It owns no resources and needs no lifespan events (mounted
    apps get none): the application's lifespan opens the clients the checks use.

    Details (per-check entries, outputs, version, service id) are hidden unless ``details`` is
    True or the request carries the ``token`` (``Authorization: Bearer <token>``, or the header
    named by ``token_header``). Outputs are redacted of credentials.

    Args:
        registry: the checks to serve.
        paths: path -> group (``None`` for all checks), relative to the mount point.
        details: show details to every caller (only for a private port or network).
        token: a secret that unlocks details per request (compared in constant time).
        token_header: the request header carrying the token; for ``authorization`` the value
            is ``Bearer <token>``.
        version: ``version`` in detailed responses.
        release_id: ``releaseId`` in detailed responses.
        service_id: ``serviceId`` in detailed responses.
        description: ``description`` in detailed responses.

    Raises:
        ConfigurationError: a path does not start with ``/``, or the token is empty.
    """

    def __init__(
        self,
        registry: HealthRegistry,
        *,
        paths: Mapping[str, str | None] | None = None,
        details: bool = False,
        token: str | None = None,
        token_header: str = "authorization",
        version: str | None = None,
        release_id: str | None = None,
        service_id: str | None = None,
        description: str | None = None,
    ) -> None:
        if not isinstance(registry, HealthRegistry):
            raise TypeError(f"HealthApp needs a HealthRegistry, got {type(registry).__name__}")
        table = dict(DEFAULT_PATHS if paths is None else paths)
        for path in table:
            if not isinstance(path, str) or not path.startswith("/"):
                raise ConfigurationError(f"health paths must start with '/', got {path!r}")
        if token is not None and (not isinstance(token, str) or not token):
            raise ConfigurationError("token must be a non-empty string (or None for no token)")
        self.registry = registry
        self.paths: dict[str, str | None] = {_norm(p): g for p, g in table.items()}
        self.details = details
        self._token = None if token is None else token.encode()
        self._token_header = token_header.lower().encode("latin-1")
        self._bearer = self._token_header == b"authorization"
        self._meta = {
            "version": version,
            "release_id": release_id,
            "service_id": service_id,
            "description": description,
        }
        self._rendered: dict[tuple[str | None, bool], tuple[HealthReport, _Answer]] = {}

    # -- the framework-neutral core -------------------------------------------------------------

    def authorized(self, headers: Iterable[tuple[bytes, bytes]]) -> bool:
        """Whether a request with ``headers`` (raw ASGI pairs) may see details."""
        if self.details:
            return True
        if self._token is None:
            return False
        for name, value in headers:
            if name.lower() == self._token_header:
                return self._matches(value)
        return False

    def _matches(self, value: bytes) -> bool:
        assert self._token is not None
        if self._bearer:
            scheme, _, value = value.strip().partition(b" ")
            if scheme.lower() != b"bearer":
                return False
        return hmac.compare_digest(value.strip(), self._token)

    async def respond(self, path: str, *, detailed: bool = False) -> HealthResponse:
        """Answer a probe of ``path`` (relative to the mount point).

        Args:
            path: the request path with the mount prefix removed.
            detailed: whether the caller may see details (see :meth:`authorized`).

        Returns:
            The response to send; unknown paths get 404.
        """
        code, headers, body = await self._answer(_norm(path), detailed or self.details)
        return HealthResponse(
            code, tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in headers), body
        )

    async def _answer(self, path: str, detailed: bool) -> _Answer:
        try:
            group = self.paths[path]
        except KeyError:
            return _NOT_FOUND_ANSWER
        report = await self.registry.run(group)
        key = (group, detailed)
        cached = self._rendered.get(key)
        if cached is not None and cached[0] is report:
            return cached[1]  # results unchanged: reuse the encoded response
        doc = render(
            report,
            details=detailed,
            version=self._meta["version"],
            release_id=self._meta["release_id"],
            service_id=self._meta["service_id"],
            description=self._meta["description"],
        )
        body = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
        answer = (200 if report.healthy else 503, _raw_headers(len(body)), body)
        self._rendered[key] = (report, answer)
        return answer

    # -- ASGI -----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry point (http; lifespan is acknowledged, nothing is opened)."""
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, send)
        elif kind == "lifespan":
            await _lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1003})

    async def _http(self, scope: Scope, send: Send) -> None:
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            await send(
                {
                    "type": "http.response.start",
                    "status": 405,
                    "headers": [(b"allow", b"GET, HEAD"), (b"content-length", b"0")],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        detailed = self.details or (
            self._token is not None and self.authorized(scope.get("headers", ()))
        )
        path = scope["path"]
        if scope.get("root_path"):
            path = _route_path(scope)
        if path not in self.paths:
            path = _norm(path)
        code, headers, body = await self._answer(path, detailed)
        await send({"type": "http.response.start", "status": code, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

    def __repr__(self) -> str:
        return f"HealthApp(paths={sorted(self.paths)}, details={self.details})"


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _norm(path: str) -> str:
    if len(path) > 1 and path.endswith("/"):
        path = path.rstrip("/") or "/"
    return path or "/"


def _route_path(scope: Scope) -> str:
    # Starlette-style mounts keep the full path and put the prefix in root_path.
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        path = path[len(root) :]
    return path
