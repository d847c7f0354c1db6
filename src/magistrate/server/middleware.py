"""ASGI middleware of the service: the body-size limit and per-route request metrics, and
the OpenAI-shaped error response they and the app's handlers share."""

import time
from collections.abc import Callable, MutableMapping
from contextlib import suppress
from typing import Any

from fastapi.responses import JSONResponse

from magistrate.server.service import Service


def error_response(
    status: int, message: str, kind: str, code: str | None = None, **headers: str
) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers or None)


class BodyLimit:
    """Refuses bodies over `limit` bytes with 413, by Content-Length or while streaming."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        seen = 0
        exceeded = False

        async def limited() -> MutableMapping[str, Any]:
            nonlocal seen, exceeded
            message: MutableMapping[str, Any] = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    exceeded = True
                    raise _TooBig()
            return message

        async def sending(message: MutableMapping[str, Any]) -> None:
            if not exceeded:  # whatever the app made of the cut-off body is replaced
                await send(message)

        with suppress(_TooBig):
            await self.app(scope, limited, sending)
        if exceeded:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Any, receive: Any, send: Any) -> None:
        response = error_response(
            413,
            f"The request body is over {self.limit:,} bytes. Send fewer or smaller items "
            "per request.",
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
