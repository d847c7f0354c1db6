"""`/healthz`, `/readyz` and `/metrics` (no key needed: probes and Prometheus)."""

from fastapi import APIRouter, Request, Response

from magistrate.server.deps import running_service
from magistrate.server.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(request: Request, response: Response) -> Readiness:
    """Model loaded, store reachable, not shutting down."""
    svc = running_service(request)
    if svc is None:
        response.status_code = 503
        return Readiness(status="starting", model="loading", store="unknown", draining=False)
    ready, store_state, problem = await svc.readiness()
    response.status_code = 200 if ready else 503
    return Readiness(
        status="ready" if ready else "not ready",
        model=svc.backend.name,
        store=store_state,
        draining=svc.draining,
        detail=problem,
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text."}},
)
async def metrics(request: Request) -> Response:
    """Prometheus metrics: requests, latency, decisions by label, abstains, errors, cache."""
    svc = running_service(request)
    body = svc.metrics.render() if svc is not None else b""
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
