"""`POST /v1/moderations`: OpenAI's Moderation API, each category a policy."""

from fastapi import APIRouter

from magistrate.server.deps import ClassifyKey, ServiceDep
from magistrate.server.responses import ERRORS, NOT_FOUND
from magistrate.server.schemas import ErrorResponse, ModerationRequest, ModerationResponse

router = APIRouter(tags=["classify"])


@router.post(
    "/v1/moderations",
    response_model=ModerationResponse,
    responses={
        **ERRORS,
        **NOT_FOUND,
        503: {"model": ErrorResponse, "description": "Some category got no verdict."},
    },
)
async def moderations(
    body: ModerationRequest, key: ClassifyKey, svc: ServiceDep
) -> ModerationResponse:
    """The OpenAI Moderation API: each category is a policy.

    On a backend that reads several labels in one pass (the embedded model) all the
    categories are judged in one prompt per item, in score mode, each against its own
    threshold (the starter pack's category thresholds were chosen that way); elsewhere
    each category is judged on its own.
    """
    return await svc.moderate(body)
