"""The FastAPI app: classify, OpenAI-style moderations, batches, policies, decisions, keys,
health.

`create_app(settings)` builds the app from one router per resource (`server/routes/`); the
`Service` (engine, store, backend) is created when the app starts (uvicorn's lifespan) and
reaches routes through the `ServiceDep` dependency, so building an app (for the OpenAPI
document) loads nothing. Every error becomes an OpenAI-shaped body through
`errors.http_status`, the one table of status codes. Content to classify is never logged: the
only log lines are uvicorn's access lines (method, path, status) and error classes.

Example:
    >>> import uvicorn
    >>> uvicorn.run(create_app(ServerSettings(model="llamacpp/embedded")), port=8000)
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from magistrate import __version__
from magistrate.backends import Backend
from magistrate.errors import MagistrateError, Overloaded, http_status
from magistrate.server.middleware import BodyLimit, RequestMetrics, RequireKey, error_response
from magistrate.server.routes import ROUTERS
from magistrate.server.schemas import ServerSettings
from magistrate.server.service import Service
from magistrate.store import Store

log = logging.getLogger("magistrate.server")


def create_app(
    settings: ServerSettings | None = None,
    *,
    backend: Backend | None = None,
    store: Store | None = None,
) -> FastAPI:
    """The moderation service as an ASGI app.

    Args:
        settings: Server settings (defaults: embedded model, loopback, no keys needed).
        backend: A ready backend instead of `settings.model` (tests use a scripted one).
        store: A ready store instead of `settings.database`.
    """
    settings = settings or ServerSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = await asyncio.to_thread(Service, settings, backend=backend, store=store)
        await service.batches.start()
        app.state.service = service
        try:
            yield
        finally:
            service.draining = True
            await service.aclose()

    app = FastAPI(
        title="Magistrate",
        version=__version__,
        summary="Apply written policies to content with reasoning models.",
        lifespan=lifespan,
    )
    app.state.service = None
    # The last added runs first: CORS, metrics, then the key (before the body is looked at:
    # a caller without a key gets 401 whatever it sent), then the body limit.
    app.add_middleware(
        BodyLimit,
        limit=settings.max_body_bytes,
        uploads={"/v1/batches": settings.batch_max_bytes},
    )
    if settings.keys_required:
        app.add_middleware(RequireKey, get_service=lambda: app.state.service)
    app.add_middleware(RequestMetrics, get_service=lambda: app.state.service)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
        )
    _add_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as `{"error": {"message", "type", "code"}}`, as OpenAI's API answers."""

    @app.exception_handler(MagistrateError)
    async def _magistrate_error(_: Request, exc: MagistrateError) -> JSONResponse:
        answer = http_status(exc)
        service: Service | None = app.state.service
        if isinstance(exc, Overloaded) and service is not None and exc.code == "queue_full":
            service.metrics.rejected.labels("queue").inc()
        if answer.status == 500:
            log.error("unexpected %s while serving a request", type(exc).__name__)
        return error_response(
            answer.status, str(exc), answer.type, answer.code, **dict(answer.headers)
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors()[:10]:
            if err.get("type") == "json_invalid":  # FastAPI's loc is the character position
                return error_response(
                    422, _not_json(err), "invalid_request_error", "invalid_request"
                )
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
        return error_response(422, "; ".join(problems), "invalid_request_error", "invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 400 and "parsing the body" in message:
            message = _unparsable(exc.__cause__)
        return error_response(exc.status_code, message, "invalid_request_error")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected %s while serving a request", type(exc).__name__)
        return error_response(500, "Internal error; the request was not judged.", "server_error")


def _not_json(err: Mapping[str, Any]) -> str:
    """What is wrong with a body that is not JSON: the parser's reason and where, never the
    body itself (the reason is one of the json module's fixed phrases)."""
    reason = str((err.get("ctx") or {}).get("error", "malformed"))
    where = err.get("loc", ("body", "?"))[-1]
    return (
        f"The body is not valid JSON ({reason} at character {where}); send Content-Type: "
        "application/json with one JSON document."
    )


def _unparsable(cause: BaseException | None) -> str:
    """Why the body could not be parsed (FastAPI answers 400 and chains the reason)."""
    if isinstance(cause, RecursionError):
        return (
            "The body could not be parsed as JSON: it is nested too deeply. Flatten it (item "
            "metadata may nest 32 levels)."
        )
    if isinstance(cause, UnicodeDecodeError):
        return (
            f"The body is not valid UTF-8 (bad byte at offset {cause.start}); send JSON "
            "encoded as UTF-8 with Content-Type: application/json."
        )
    return (
        "The body could not be parsed as JSON (malformed); send Content-Type: "
        "application/json with one JSON document in UTF-8."
    )


def app_from_env() -> FastAPI:
    """An app from `$MAGISTRATE_SERVER_SETTINGS` (JSON): what `--workers N` processes run."""
    import os

    raw = os.environ.get("MAGISTRATE_SERVER_SETTINGS", "{}")
    return create_app(ServerSettings.model_validate_json(raw))
