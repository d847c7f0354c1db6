"""ASGI middleware of the service: the API key check, the body-size limit and per-route
request metrics, and the OpenAI-shaped error response they and the app's handlers share."""

import time
from collections.abc import Callable, MutableMapping
from contextlib import suppress
from typing import Any

from fastapi.responses import JSONResponse

from magistrate.errors import MagistrateError, Unavailable, http_status
from magistrate.server.service import Service
from magistrate.store.store import ApiKey


def error_response(
    status: int, message: str, kind: str, code: str | None = None, **headers: str
) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers or None)


OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
"""What answers without a key even where keys are required: probes and scrapers."""

IDENTIFIED = "magistrate.api_key"
"""The ASGI scope key under which `RequireKey` leaves the caller's key for the routes."""


def identified(scope: MutableMapping[str, Any]) -> ApiKey | None:
    """The key `RequireKey` found for this request, if it ran."""
    key = scope.get(IDENTIFIED)
    return key if isinstance(key, ApiKey) else None


class RequireKey:
    """Where keys are required, answers 401 to a request without a live key before anything
    else looks at it: its body is not read, parsed or validated, so a caller without a key
    learns nothing from the body's errors. Every path but `OPEN_PATHS` needs a key, the API
    documents (`/docs`, `/redoc`, `/openapi.json`) included. Scopes and rates are the routes'
    (their dependencies reuse the key found here).
    """

    def __init__(self, app: Any, get_service: Callable[[], Service | None]) -> None:
        self.app, self.get_service = app, get_service

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or _route_path(scope) in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        try:
            service = self.get_service()
            if service is None:
                raise Unavailable("The server is starting.", code="starting")
            scope[IDENTIFIED] = await service.identify(bearer_secret(scope))
        except MagistrateError as exc:
            answer = http_status(exc)
            response = error_response(
                answer.status, str(exc), answer.type, answer.code, **dict(answer.headers)
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _route_path(scope: MutableMapping[str, Any]) -> str:
    """The path as the app's routes see it (behind a proxy, `path` carries the root path)."""
    path, root = str(scope["path"]), str(scope.get("root_path") or "")
    return path[len(root) :] if root and path.startswith(root) else path


def bearer_secret(scope: MutableMapping[str, Any]) -> str | None:
    """The secret of an `Authorization: Bearer ...` header (as FastAPI's HTTPBearer reads it:
    any other scheme, or none, is no key)."""
    for name, value in scope.get("headers") or ():
        if name.lower() == b"authorization":
            header: bytes = value
            scheme, _, secret = header.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and secret.strip():
                return secret.strip()
            return None
    return None


class BodyLimit:
    """Refuses bodies over `limit` bytes with 413, by Content-Length or while streaming.

    Args:
        limit: The most any request body may hold.
        uploads: Route paths that take uploads (`POST /v1/batches`) and their own, larger
            limit.
    """

    def __init__(self, app: Any, limit: int, uploads: dict[str, int] | None = None) -> None:
        self.app, self.limit, self.uploads = app, limit, uploads or {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit
        upload = scope["method"] == "POST" and _route_path(scope) in self.uploads
        if upload:
            limit = self.uploads[_route_path(scope)]
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(scope, receive, send, limit, upload)
            return
        seen = 0
        exceeded = False

        async def limited() -> MutableMapping[str, Any]:
            nonlocal seen, exceeded
            message: MutableMapping[str, Any] = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    exceeded = True
                    raise _TooBig()
            return message

        async def sending(message: MutableMapping[str, Any]) -> None:
            if not exceeded:  # whatever the app made of the cut-off body is replaced
                await send(message)

        with suppress(_TooBig):
            await self.app(scope, limited, sending)
        if exceeded:
            await self._refuse(scope, receive, send, limit, upload)

    async def _refuse(self, scope: Any, receive: Any, send: Any, limit: int, upload: bool) -> None:
        advice = (
            "Split the input into several batch jobs."
            if upload
            else "Send fewer or smaller items per request."
        )
        response = error_response(
            413,
            f"The request body is over {limit:,} bytes. {advice}",
            "invalid_request_error",
            "body_too_large",
        )
        await response(scope, receive, send)


class _TooBig(Exception):
    pass


class RequestMetrics:
    """Counts every request by route template and status, and times it."""

    def __init__(self, app: Any, get_service: Callable[[], Service | None]) -> None:
        self.app, self.get_service = app, get_service

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def sending(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            service = self.get_service()
            if service is not None:
                route = scope.get("route")
                template = getattr(route, "path", None) or "unmatched"
                service.metrics.requests.labels(template, scope["method"], str(status)).inc()
                service.metrics.latency.labels(template).observe(time.perf_counter() - start)
