"""`/v1/keys`: create, list and revoke API keys (scope `admin`; secrets are shown once)."""

from typing import Annotated

from fastapi import APIRouter, Path, Response

from magistrate.server.deps import AdminKey, ServiceDep
from magistrate.server.responses import ERRORS, NOT_FOUND
from magistrate.server.schemas import (
    ErrorResponse,
    KeyCreate,
    KeyCreated,
    KeyList,
    KeyOut,
    Text,
)

router = APIRouter(tags=["keys"])


@router.post(
    "/v1/keys",
    response_model=KeyCreated,
    status_code=201,
    responses={
        **ERRORS,
        409: {"model": ErrorResponse, "description": "A key with this name exists."},
    },
)
async def create_key(
    body: KeyCreate, key: AdminKey, svc: ServiceDep, response: Response
) -> KeyCreated:
    """A new API key. The secret is in this answer only; the log keeps its SHA-256."""
    record, secret = await svc.create_key(body.name, body.scopes, body.rate_per_minute)
    response.headers["Cache-Control"] = "no-store"
    return KeyCreated(key=KeyOut(**record.to_dict()), secret=secret)


@router.get("/v1/keys", response_model=KeyList, responses=ERRORS)
async def list_keys(key: AdminKey, svc: ServiceDep, include_revoked: bool = False) -> KeyList:
    """Every API key's record, oldest first (never a secret)."""
    return KeyList(keys=[KeyOut(**k.to_dict()) for k in await svc.keys(include_revoked)])


@router.delete("/v1/keys/{name}", response_model=KeyOut, responses={**ERRORS, **NOT_FOUND})
async def revoke_key(
    name: Annotated[Text, Path(min_length=1, max_length=100, description="Name or id.")],
    key: AdminKey,
    svc: ServiceDep,
) -> KeyOut:
    """Revoke a key by name or id; requests with it are refused from then on."""
    return KeyOut(**(await svc.revoke_key(name)).to_dict())
