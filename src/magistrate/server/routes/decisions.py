"""`/v1/decisions`: the decision log, newest first, and one decision by id; `/v1/checkpoint`:
the log's latest signed checkpoint."""

from typing import Annotated

from fastapi import APIRouter, Path, Query

from magistrate.server.deps import AdminKey, ClassifyKey, ServiceDep
from magistrate.server.responses import ERRORS, NOT_FOUND
from magistrate.server.schemas import DecisionList, StoredDecisionOut, Text
from magistrate.store import DecisionFilter, StoredDecision
from magistrate.store.checkpoints import Checkpoint
from magistrate.store.store import parse_since

router = APIRouter(tags=["decisions"])


def _out(row: StoredDecision, include_content: bool) -> StoredDecisionOut:
    return StoredDecisionOut(
        seq=row.seq,
        decision=row.decision.to_dict(),
        content=row.content if include_content else None,
    )


@router.get("/v1/decisions", response_model=DecisionList, responses=ERRORS)
async def list_decisions(
    key: AdminKey,
    svc: ServiceDep,
    policy: Annotated[Text | None, Query(max_length=200)] = None,
    label: Annotated[Text | None, Query(max_length=200)] = None,
    since: Annotated[
        Text | None, Query(max_length=64, description="`30m`, `2h`, `7d` or an ISO time.")
    ] = None,
    violations: bool = False,
    abstained: bool = False,
    before: Annotated[
        # No `le`: 2**63 - 1 is past what JSON clients hold exactly; DecisionFilter refuses
        # a seq beyond the log's integer column with a 422.
        int | None,
        Query(ge=1, description="Only decisions older than this seq."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    include_content: bool = False,
) -> DecisionList:
    """Recorded decisions, newest first (filters as in `magistrate logs list`)."""
    where = DecisionFilter(
        policy_id=policy,
        label=label,
        since=parse_since(since) if since else None,
        violations=violations,
        abstained=abstained,
        before_seq=before,
    )
    rows = await svc.decisions(where, limit)
    return DecisionList(decisions=[_out(r, include_content) for r in rows])


@router.get(
    "/v1/decisions/{decision_id}",
    response_model=StoredDecisionOut,
    responses={**ERRORS, **NOT_FOUND},
)
async def get_decision(
    decision_id: Annotated[str, Path(pattern=r"^[0-9A-Za-z]{6,26}$")],
    key: AdminKey,
    svc: ServiceDep,
    include_content: bool = False,
) -> StoredDecisionOut:
    """One recorded decision by id (or a unique id prefix)."""
    # NotFound answers 404; StoreUnavailable (the database is down) answers 503.
    return _out(await svc.decision(decision_id), include_content)


@router.get("/v1/checkpoint", response_model=Checkpoint, responses={**ERRORS, **NOT_FOUND})
async def get_checkpoint(key: ClassifyKey, svc: ServiceDep) -> Checkpoint:
    """The decision log's latest signed checkpoint (size, Merkle root, last row hash,
    Ed25519 signature). Keep copies: `magistrate logs verify --checkpoint URL` later proves
    that no decision it covers was changed or removed."""
    return await svc.checkpoint()
