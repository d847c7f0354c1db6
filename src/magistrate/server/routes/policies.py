"""`/v1/policies`: list, read, store (as immutable versions), version history, activate."""

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path, Response

from magistrate.errors import InputError, PolicyError
from magistrate.lint import lint_policy
from magistrate.policy import Policy, parse_policy
from magistrate.server.deps import AdminKey, ClassifyKey, ServiceDep
from magistrate.server.responses import ERRORS, NOT_FOUND
from magistrate.server.schemas import (
    ActivateRequest,
    FindingOut,
    PolicyDetail,
    PolicyList,
    PolicyPut,
    PolicyPutResponse,
    PolicySummary,
    PolicyVersionOut,
    PolicyVersions,
)
from magistrate.server.service import Service

POLICY_ID = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$"

router = APIRouter(tags=["policies"])
PolicyId = Annotated[str, Path(pattern=POLICY_ID, description="The policy's id.")]


async def _summary(svc: Service, policy: Policy) -> PolicySummary:
    return PolicySummary(
        id=policy.id,
        version=policy.version,
        hash=policy.hash,
        title=policy.title,
        source="store" if await svc.catalog.source(policy) == "store" else "builtin",
        labels=[label.name for label in policy.labels],
        violating_labels=[label.name for label in policy.labels if label.violation],
    )


async def _detail(svc: Service, policy: Policy) -> PolicyDetail:
    findings = await asyncio.to_thread(lint_policy, policy)  # large texts: off the loop
    return PolicyDetail(
        **(await _summary(svc, policy)).model_dump(),
        text=policy.text,
        rule_ids=sorted(policy.rule_ids),
        output=policy.output.value,
        threshold=policy.threshold,
        findings=[FindingOut(**f.to_dict()) for f in findings],
    )


@router.get("/v1/policies", response_model=PolicyList, responses=ERRORS)
async def list_policies(key: ClassifyKey, svc: ServiceDep) -> PolicyList:
    """Every policy id the server judges under, with its active version."""
    ids = await svc.catalog.ids()
    return PolicyList(policies=[await _summary(svc, await svc.catalog.policy(i)) for i in ids])


@router.get(
    "/v1/policies/{policy_id}", response_model=PolicyDetail, responses={**ERRORS, **NOT_FOUND}
)
async def get_policy(policy_id: PolicyId, key: ClassifyKey, svc: ServiceDep) -> PolicyDetail:
    """The active text of a policy, its parsed structure and its lint findings."""
    return await _detail(svc, await svc.catalog.policy(policy_id))


@router.put(
    "/v1/policies/{policy_id}",
    response_model=PolicyPutResponse,
    responses={**ERRORS, 201: {"model": PolicyPutResponse}},
)
async def put_policy(
    policy_id: PolicyId, body: PolicyPut, key: AdminKey, svc: ServiceDep, response: Response
) -> PolicyPutResponse:
    """Store a policy text as an immutable version (by hash); lint it; activate it."""
    policy = await asyncio.to_thread(
        parse_policy, body.text, source=f"api:{policy_id}", default_id=policy_id
    )
    if policy.id != policy_id:
        raise InputError(
            f"The text's front matter says id {policy.id!r} but the URL says "
            f"{policy_id!r}; make them match."
        )
    errors = [f for f in await asyncio.to_thread(lint_policy, policy) if f.severity == "error"]
    if errors and not body.allow_lint_errors:
        listed = "; ".join(f"line {f.line}: {f.message}" for f in errors[:5])
        raise PolicyError(
            f"The policy has {len(errors)} lint error(s): {listed}. Fix them, or send "
            '"allow_lint_errors": true.'
        )
    created = await svc.catalog.put(policy, activate=body.activate)
    response.status_code = 201 if created else 200
    active = (await svc.catalog.active()).get(policy_id) == policy.hash
    return PolicyPutResponse(policy=await _detail(svc, policy), created=created, active=active)


@router.get(
    "/v1/policies/{policy_id}/versions",
    response_model=PolicyVersions,
    responses={**ERRORS, **NOT_FOUND},
)
async def policy_versions(policy_id: PolicyId, key: ClassifyKey, svc: ServiceDep) -> PolicyVersions:
    """Every stored text of a policy, oldest first, with the active one marked."""
    versions = await svc.catalog.versions(policy_id)
    active = (await svc.catalog.active()).get(policy_id)
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


@router.put(
    "/v1/policies/{policy_id}/active",
    response_model=PolicyDetail,
    responses={**ERRORS, **NOT_FOUND},
)
async def activate(
    policy_id: PolicyId, body: ActivateRequest, key: AdminKey, svc: ServiceDep
) -> PolicyDetail:
    """Make a stored version the one the server applies."""
    return await _detail(svc, await svc.catalog.activate(policy_id, body.version))
