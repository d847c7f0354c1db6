"""The FastAPI app: classify, OpenAI-style moderations, policies, decisions, health, metrics.

`create_app(settings)` builds the app; the engine, store and backend are created when the
app starts (uvicorn's lifespan), so building an app (for the OpenAPI document) loads nothing.
Content to classify is never logged: the only log lines are uvicorn's access lines (method,
path, status) and error classes.

Example:
    >>> import uvicorn
    >>> uvicorn.run(create_app(ServerSettings(model="llamacpp/embedded")), port=8000)
"""

# No `from __future__ import annotations`: FastAPI reads the dependency aliases defined
# inside create_app from the endpoint signatures, which needs evaluated annotations.

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager, suppress
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Path, Query, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from magistrate import __version__
from magistrate.backends import Backend
from magistrate.errors import (
    Forbidden,
    InputError,
    MagistrateError,
    NotFound,
    Overloaded,
    PolicyError,
    TooLarge,
    http_status,
)
from magistrate.ids import new_ulid
from magistrate.lint import lint_policy
from magistrate.policy import Policy, builtin_policy_names, parse_policy
from magistrate.prompt import Mode
from magistrate.server.limits import TTLCache
from magistrate.server.schemas import (
    ActivateRequest,
    ClassifyRequest,
    ClassifyResponse,
    DecisionList,
    DecisionOut,
    ErrorResponse,
    FindingOut,
    Health,
    ItemIn,
    ModerationRequest,
    ModerationResponse,
    ModerationResult,
    PolicyDetail,
    PolicyList,
    PolicyPut,
    PolicyPutResponse,
    PolicySummary,
    PolicyVersionOut,
    PolicyVersions,
    Readiness,
    ServerSettings,
    StoredDecisionOut,
)
from magistrate.server.service import ANONYMOUS, Service, inline_policy
from magistrate.store import DecisionFilter, Store
from magistrate.store.store import ApiKey, parse_since

log = logging.getLogger("magistrate.server")

POLICY_ID = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$"
IDEMPOTENCY_TTL_S = 24 * 3600

_bearer = HTTPBearer(auto_error=False, description="An API key from `magistrate keys create`.")

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "The body is not JSON in UTF-8."},
    401: {"model": ErrorResponse, "description": "No API key, or an unknown or revoked one."},
    403: {"model": ErrorResponse, "description": "The key lacks the scope this needs."},
    413: {"model": ErrorResponse, "description": "The body or the item count is too large."},
    422: {"model": ErrorResponse, "description": "The request cannot be judged as sent."},
    429: {"model": ErrorResponse, "description": "Rate limit or full queue; see Retry-After."},
    503: {"model": ErrorResponse, "description": "Starting, shutting down, or store down."},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "No such policy, version or decision."}
}


class ServiceError(Exception):
    """An error with its HTTP status, in the OpenAI error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code = status, message, kind, code
        self.headers = headers or {}


def _error(
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
        response = _error(
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
    state: dict[str, Service] = {}
    idempotent: TTLCache[tuple[str, dict[str, Any]]] = TTLCache(IDEMPOTENCY_TTL_S, 100_000)
    in_flight: set[str] = set()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = await asyncio.to_thread(Service, settings, backend=backend, store=store)
        state["service"] = service
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
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, get_service=lambda: state.get("service"))
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
        )

    def service() -> Service:
        svc = state.get("service")
        if svc is None:
            raise ServiceError(503, "The server is starting.", "server_error", "starting")
        if svc.draining:
            raise ServiceError(
                503,
                "The server is shutting down.",
                "server_error",
                "draining",
                {"Retry-After": "5"},
            )
        return svc

    def caller(
        scope: str,
    ) -> Callable[[HTTPAuthorizationCredentials | None], Awaitable[ApiKey]]:
        async def check(
            credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
        ) -> ApiKey:
            svc = service()
            secret = credentials.credentials if credentials is not None else None
            if secret is None and not svc.settings.keys_required:
                key: ApiKey | None = ANONYMOUS  # nothing to look up
            else:
                key = await asyncio.to_thread(svc.authenticate, secret)
            if key is None:
                svc.metrics.rejected.labels("auth").inc()
                raise ServiceError(
                    401,
                    "Send an API key as `Authorization: Bearer mg_...` (create one with "
                    "`magistrate keys create NAME`)."
                    if secret is None
                    else "This API key is unknown or revoked.",
                    "authentication_error",
                    "invalid_api_key",
                    {"WWW-Authenticate": "Bearer"},
                )
            svc.check_scope(key, scope)
            if key.id != "anonymous":
                wait = svc.rate.check(key.id, key.rate_per_minute)
                if wait:
                    svc.metrics.rejected.labels("rate").inc()
                    raise ServiceError(
                        429,
                        "This API key is over its request rate; retry after the Retry-After delay.",
                        "rate_limit_error",
                        "rate_limited",
                        {"Retry-After": str(wait)},
                    )
            return key

        return check

    Classify = Annotated[ApiKey, Depends(caller("classify"))]
    Admin = Annotated[ApiKey, Depends(caller("admin"))]

    # -- errors -----------------------------------------------------------------------------

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.kind, exc.code, **exc.headers)

    @app.exception_handler(MagistrateError)
    async def _magistrate_error(_: Request, exc: MagistrateError) -> JSONResponse:
        answer = http_status(exc)
        headers: dict[str, str] = {}
        if isinstance(exc, Overloaded):
            headers["Retry-After"] = str(exc.retry_after)
            svc = state.get("service")
            if svc is not None:
                svc.metrics.rejected.labels("queue").inc()
        if answer.status == 500:
            log.error("unexpected %s while serving a request", type(exc).__name__)
        return _error(answer.status, str(exc), answer.type, answer.code, **headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors()[:10]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
        return _error(422, "; ".join(problems), "invalid_request_error", "invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 400 and "parsing the body" in message:
            message = "The body is not a JSON document in UTF-8; send Content-Type: " + (
                "application/json with valid UTF-8 JSON."
            )
        return _error(exc.status_code, message, "invalid_request_error")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected %s while serving a request", type(exc).__name__)
        return _error(500, "Internal error; the request was not judged.", "server_error")

    # -- classify ---------------------------------------------------------------------------

    @app.post(
        "/v1/classify",
        response_model=ClassifyResponse,
        responses={
            **ERRORS,
            **NOT_FOUND,
            409: {"model": ErrorResponse, "description": "Idempotency clash."},
        },
        tags=["classify"],
    )
    async def classify(
        body: ClassifyRequest,
        key: Classify,
        response: Response,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> Any:
        """Judge items under one or several policies; decisions come back in item order."""
        svc = service()
        idem = body.idempotency_key or idempotency_key
        if idem is None:
            return await _classify(svc, body)
        slot = f"{key.id}:{idem}"
        digest = hashlib.sha256(
            body.model_dump_json(exclude={"idempotency_key"}).encode()
        ).hexdigest()
        earlier = idempotent.get(slot)
        if earlier is not None:
            if earlier[0] != digest:
                raise ServiceError(
                    409,
                    "This Idempotency-Key was used with a different request body; use a new key.",
                    "invalid_request_error",
                    "idempotency_mismatch",
                )
            response.headers["Idempotent-Replayed"] = "true"
            return earlier[1]
        if slot in in_flight:
            raise ServiceError(
                409,
                "A request with this Idempotency-Key is still running; retry when it ends.",
                "invalid_request_error",
                "idempotency_in_progress",
            )
        in_flight.add(slot)
        try:
            result = (await _classify(svc, body)).model_dump(mode="json")
            idempotent.put(slot, (digest, result))
            return result
        finally:
            in_flight.discard(slot)

    async def _classify(svc: Service, body: ClassifyRequest) -> ClassifyResponse:
        policies = _policies(svc, body)
        items = svc.items(body.items)
        mode = body.mode or svc.settings.mode
        effort = body.effort or svc.settings.effort
        judged = await svc.judge(items, policies, mode, effort)
        decisions = [
            DecisionOut.of(
                decision,
                judgement.index,
                cached=cached,
                reasoning=body.include_reasoning,
                item_id=judgement.item.id,
            )
            for judgement in judged
            for decision, cached in zip(judgement.decisions, judgement.cached, strict=True)
        ]
        return ClassifyResponse(
            request_id=new_ulid(), backend=svc.backend.name, decisions=decisions
        )

    def _policies(svc: Service, body: ClassifyRequest) -> list[Policy]:
        if body.policy_text is not None:
            if not svc.settings.allow_inline_policies:
                raise Forbidden(
                    "This server does not take inline policies; name a policy id it knows, "
                    "or start it with --allow-inline-policies."
                )
            if body.policies:
                raise InputError("Send either `policies` or `policy_text`, not both.")
            return [inline_policy(body.policy_text)]
        if not body.policies:
            raise InputError("Name at least one policy id in `policies`.")
        if len(body.policies) > svc.settings.max_policies:
            raise TooLarge(
                f"{len(body.policies)} policies in one request; this server takes at most "
                f"{svc.settings.max_policies}."
            )
        if len(set(body.policies)) != len(body.policies):
            raise InputError("`policies` names a policy twice.")
        return [svc.policy(pid) for pid in body.policies]

    # -- moderations (OpenAI's API shape) ----------------------------------------------------

    @app.post(
        "/v1/moderations",
        response_model=ModerationResponse,
        responses={
            **ERRORS,
            **NOT_FOUND,
            503: {"model": ErrorResponse, "description": "Some category got no verdict."},
        },
        tags=["classify"],
    )
    async def moderations(body: ModerationRequest, key: Classify) -> ModerationResponse:
        """The OpenAI Moderation API: each category is a policy.

        On a backend that reads several labels in one pass (the embedded model) all the
        categories are judged in one prompt per item, in score mode, each against its own
        threshold (the starter pack's category thresholds were chosen that way); elsewhere
        each category is judged on its own.
        """
        svc = service()
        if isinstance(body.input, str):
            texts = [body.input]
        else:
            texts = [part if isinstance(part, str) else part.text for part in body.input]
        if not texts:
            raise InputError("`input` is empty; send a string or a non-empty array.")
        items = svc.items([ItemIn(text=t) for t in texts])
        categories = svc.settings.moderation_categories
        policies = [svc.policy(pid) for pid in categories.values()]
        combine = svc.can_combine(policies)
        mode = Mode.SCORE if svc.backend.capabilities.label_scores else Mode.REASON
        judged = await svc.judge(items, policies, mode, svc.settings.effort, combine=combine)
        results = []
        for judgement in judged:
            flags: dict[str, bool] = {}
            scores: dict[str, float] = {}
            ids: dict[str, str] = {}
            for name, decision in zip(categories, judgement.decisions, strict=True):
                flagged = decision.flagged
                if flagged is None:
                    raise ServiceError(
                        503,
                        f"No verdict was reached for category {name!r} "
                        f"({decision.verdict.status.value}); the item was not judged safe. "
                        f"Decision {decision.id} records why. Retry, or run the server with "
                        "--on-abstain fail-closed.",
                        "server_error",
                        "verdict_unavailable",
                        {"Retry-After": "5"},
                    )
                flags[name] = flagged
                if decision.verdict.score is not None:  # a flag is never shown as a probability
                    scores[name] = float(decision.verdict.score)
                ids[name] = decision.id
            results.append(
                ModerationResult(
                    flagged=any(flags.values()),
                    categories=flags,
                    category_scores=scores,
                    category_applied_input_types={name: ["text"] for name in categories},
                    decision_ids=ids,
                )
            )
        return ModerationResponse(
            id=f"modr-{new_ulid()}", model=body.model or svc.backend.name, results=results
        )

    # -- policies ---------------------------------------------------------------------------

    PolicyId = Annotated[str, Path(pattern=POLICY_ID, description="The policy's id.")]

    def summary(svc: Service, policy: Policy) -> dict[str, Any]:
        return {
            "id": policy.id,
            "version": policy.version,
            "hash": policy.hash,
            "title": policy.title,
            "source": "store" if policy.id in svc.active_hashes() else "builtin",
            "labels": [label.name for label in policy.labels],
            "violating_labels": [label.name for label in policy.labels if label.violation],
        }

    def detail(svc: Service, policy: Policy) -> PolicyDetail:
        return PolicyDetail(
            **summary(svc, policy),
            text=policy.text,
            rule_ids=sorted(policy.rule_ids),
            output=policy.output.value,
            threshold=policy.threshold,
            findings=[FindingOut(**f.to_dict()) for f in lint_policy(policy)],
        )

    @app.get("/v1/policies", response_model=PolicyList, responses=ERRORS, tags=["policies"])
    async def list_policies(key: Classify) -> PolicyList:
        """Every policy id the server judges under, with its active version."""
        svc = service()
        return PolicyList(
            policies=[PolicySummary(**summary(svc, svc.policy(pid))) for pid in svc.policy_ids()]
        )

    @app.get(
        "/v1/policies/{policy_id}",
        response_model=PolicyDetail,
        responses={**ERRORS, **NOT_FOUND},
        tags=["policies"],
    )
    async def get_policy(policy_id: PolicyId, key: Classify) -> PolicyDetail:
        """The active text of a policy, its parsed structure and its lint findings."""
        svc = service()
        return detail(svc, svc.policy(policy_id))

    @app.put(
        "/v1/policies/{policy_id}",
        response_model=PolicyPutResponse,
        responses={**ERRORS, 201: {"model": PolicyPutResponse}},
        tags=["policies"],
    )
    async def put_policy(
        policy_id: PolicyId, body: PolicyPut, key: Admin, response: Response
    ) -> PolicyPutResponse:
        """Store a policy text as an immutable version (by hash); lint it; activate it."""
        svc = service()
        policy = parse_policy(body.text, source=f"api:{policy_id}", default_id=policy_id)
        if policy.id != policy_id:
            raise InputError(
                f"The text's front matter says id {policy.id!r} but the URL says "
                f"{policy_id!r}; make them match."
            )
        findings = lint_policy(policy)
        errors = [f for f in findings if f.severity == "error"]
        if errors and not body.allow_lint_errors:
            listed = "; ".join(f"line {f.line}: {f.message}" for f in errors[:5])
            raise PolicyError(
                f"The policy has {len(errors)} lint error(s): {listed}. Fix them, or send "
                '"allow_lint_errors": true.'
            )
        created = await asyncio.to_thread(svc.put_policy, policy, activate=body.activate)
        response.status_code = 201 if created else 200
        active = svc.active_hashes().get(policy_id) == policy.hash
        return PolicyPutResponse(policy=detail(svc, policy), created=created, active=active)

    @app.get(
        "/v1/policies/{policy_id}/versions",
        response_model=PolicyVersions,
        responses={**ERRORS, **NOT_FOUND},
        tags=["policies"],
    )
    async def policy_versions(policy_id: PolicyId, key: Classify) -> PolicyVersions:
        """Every stored text of a policy, oldest first, with the active one marked."""
        svc = service()
        versions = svc.store.policy_versions(policy_id)
        if not versions and policy_id not in builtin_policy_names():
            raise NotFound(f"No policy {policy_id!r}.")
        active = svc.active_hashes().get(policy_id)
        return PolicyVersions(
            id=policy_id,
            versions=[
                PolicyVersionOut(
                    number=v.number,
                    hash=v.hash,
                    version=v.version,
                    title=v.title,
                    first_seen=v.first_seen,
                    decisions=v.decisions,
                    active=v.hash == active,
                )
                for v in versions
            ],
        )

    @app.put(
        "/v1/policies/{policy_id}/active",
        response_model=PolicyDetail,
        responses={**ERRORS, **NOT_FOUND},
        tags=["policies"],
    )
    async def activate(policy_id: PolicyId, body: ActivateRequest, key: Admin) -> PolicyDetail:
        """Make a stored version the one the server applies."""
        svc = service()
        policy = await asyncio.to_thread(svc.activate, policy_id, body.version)
        return detail(svc, policy)

    # -- decisions --------------------------------------------------------------------------

    @app.get("/v1/decisions", response_model=DecisionList, responses=ERRORS, tags=["decisions"])
    async def list_decisions(
        key: Admin,
        policy: Annotated[str | None, Query(max_length=200)] = None,
        label: Annotated[str | None, Query(max_length=200)] = None,
        since: Annotated[
            str | None, Query(max_length=64, description="`30m`, `2h`, `7d` or an ISO time.")
        ] = None,
        violations: bool = False,
        abstained: bool = False,
        before: Annotated[
            int | None, Query(ge=1, description="Only decisions older than this seq.")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        include_content: bool = False,
    ) -> DecisionList:
        """Recorded decisions, newest first (filters as in `magistrate logs list`)."""
        svc = service()
        where = DecisionFilter(
            policy_id=policy,
            label=label,
            since=parse_since(since) if since else None,
            violations=violations,
            abstained=abstained,
            before_seq=before,
        )
        rows = await asyncio.to_thread(svc.store.decisions, where, limit=limit)
        return DecisionList(
            decisions=[
                StoredDecisionOut(
                    seq=r.seq,
                    decision=r.decision.to_dict(),
                    content=r.content if include_content else None,
                )
                for r in rows
            ]
        )

    @app.get(
        "/v1/decisions/{decision_id}",
        response_model=StoredDecisionOut,
        responses={**ERRORS, **NOT_FOUND},
        tags=["decisions"],
    )
    async def get_decision(
        decision_id: Annotated[str, Path(pattern=r"^[0-9A-Za-z]{6,26}$")],
        key: Admin,
        include_content: bool = False,
    ) -> StoredDecisionOut:
        """One recorded decision by id (or a unique id prefix)."""
        svc = service()
        # NotFound answers 404; StoreUnavailable (the database is down) answers 503.
        row = await asyncio.to_thread(svc.store.decision, decision_id)
        return StoredDecisionOut(
            seq=row.seq,
            decision=row.decision.to_dict(),
            content=row.content if include_content else None,
        )

    # -- health and metrics -----------------------------------------------------------------

    @app.get("/healthz", response_model=Health, tags=["health"])
    async def healthz() -> Health:
        """The process is up."""
        return Health(status="ok")

    @app.get(
        "/readyz",
        response_model=Readiness,
        responses={503: {"model": Readiness}},
        tags=["health"],
    )
    async def readyz(response: Response) -> Readiness:
        """Model loaded, store reachable, not shutting down."""
        svc = state.get("service")
        if svc is None:
            response.status_code = 503
            return Readiness(status="starting", model="loading", store="unknown", draining=False)
        ready, store_state, problem = await asyncio.to_thread(svc.readiness)
        response.status_code = 200 if ready else 503
        return Readiness(
            status="ready" if ready else "not ready",
            model=svc.backend.name,
            store=store_state,
            draining=svc.draining,
            detail=problem,
        )

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text."}},
        tags=["health"],
    )
    async def metrics() -> Response:
        """Prometheus metrics: requests, latency, decisions by label, abstains, errors, cache."""
        svc = state.get("service")
        body = svc.metrics.render() if svc is not None else b""
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def app_from_env() -> FastAPI:
    """An app from `$MAGISTRATE_SERVER_SETTINGS` (JSON): what `--workers N` processes run."""
    import os

    raw = os.environ.get("MAGISTRATE_SERVER_SETTINGS", "{}")
    return create_app(ServerSettings.model_validate_json(raw))
