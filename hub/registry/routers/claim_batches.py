"""``/api/v1/claim-batches``: claim tokens for batches of devices."""

from __future__ import annotations

from fastapi import APIRouter, status
from sqlalchemy.orm import Session

from hub.api.deps import NowDep, OperatorDep, Page, PaginationDep, SessionDep, ViewerDep
from hub.registry import service
from hub.registry.models import ClaimBatch
from hub.registry.schemas import ClaimBatchCreate, ClaimBatchCreated, ClaimBatchPublic

router = APIRouter(prefix="/claim-batches", tags=["claim-batches"])


def _public(batch: ClaimBatch, device_count: int) -> ClaimBatchPublic:
    return ClaimBatchPublic(
        id=batch.id,
        name=batch.name,
        expires_at=batch.expires_at,
        created_at=batch.created_at,
        revoked_at=batch.revoked_at,
        device_count=device_count,
    )


def _with_size(session: Session, batch: ClaimBatch) -> ClaimBatchPublic:
    return _public(batch, service.claim_batch_sizes(session, [batch.id]).get(batch.id, 0))


@router.post("", status_code=status.HTTP_201_CREATED)
def create_claim_batch(
    body: ClaimBatchCreate, session: SessionDep, caller: OperatorDep, now: NowDep
) -> ClaimBatchCreated:
    """Create a claim batch; the token is in this response only.

    Unknown serials are refused with 422 and listed in ``details.serials``.
    """
    batch, token, size = service.create_claim_batch(
        session, tenant_id=caller.tenant_id, actor=caller.actor, now=now, data=body
    )
    return ClaimBatchCreated(**_public(batch, size).model_dump(), token=token)


@router.get("")
def list_claim_batches(
    session: SessionDep, caller: ViewerDep, page: PaginationDep
) -> Page[ClaimBatchPublic]:
    """List claim batches, newest first (never their tokens)."""
    items, total = service.list_claim_batches(
        session, caller.tenant_id, limit=page.limit, offset=page.offset
    )
    sizes = service.claim_batch_sizes(session, [b.id for b in items])
    return Page[ClaimBatchPublic](
        items=[_public(b, sizes.get(b.id, 0)) for b in items],
        total=total,
        limit=page.limit,
        offset=page.offset,
    )


@router.get("/{batch_id}")
def get_claim_batch(batch_id: str, session: SessionDep, caller: ViewerDep) -> ClaimBatchPublic:
    """Get one claim batch."""
    return _with_size(session, service.get_claim_batch(session, caller.tenant_id, batch_id))


@router.delete("/{batch_id}")
def revoke_claim_batch(
    batch_id: str, session: SessionDep, caller: OperatorDep, now: NowDep
) -> ClaimBatchPublic:
    """Revoke a claim batch's token (idempotent)."""
    batch = service.revoke_claim_batch(
        session, tenant_id=caller.tenant_id, actor=caller.actor, now=now, batch_id=batch_id
    )
    return _with_size(session, batch)
