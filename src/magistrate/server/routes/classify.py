"""`POST /v1/classify`: judge items under one or several policies."""

from typing import Annotated

from fastapi import APIRouter, Header, Response

from magistrate.server.deps import ClassifyKey, ServiceDep
from magistrate.server.responses import ERRORS, NOT_FOUND
from magistrate.server.schemas import ClassifyRequest, ClassifyResponse, ErrorResponse

router = APIRouter(tags=["classify"])


@router.post(
    "/v1/classify",
    response_model=ClassifyResponse,
    responses={
        **ERRORS,
        **NOT_FOUND,
        409: {"model": ErrorResponse, "description": "Idempotency clash."},
    },
)
async def classify(
    body: ClassifyRequest,
    key: ClassifyKey,
    svc: ServiceDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> ClassifyResponse:
    """Judge items under one or several policies; decisions come back in item order."""
    answer, replayed = await svc.classify(body, key, idempotency_key)
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return answer
