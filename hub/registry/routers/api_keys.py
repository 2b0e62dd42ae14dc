"""``/api/v1/api-keys``: create (shown once), list and revoke API keys (admin)."""

from __future__ import annotations

from fastapi import APIRouter, status

from hub.api.deps import AdminDep, NowDep, Page, PaginationDep, SessionDep
from hub.registry import service
from hub.registry.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyPublic

router = APIRouter(prefix="/api-keys", tags=["api-keys"])


@router.post("", status_code=status.HTTP_201_CREATED)
def create_api_key(
    body: ApiKeyCreate, session: SessionDep, caller: AdminDep, now: NowDep
) -> ApiKeyCreated:
    """Create an API key; the full key is in this response only."""
    key, token = service.create_api_key(
        session, tenant_id=caller.tenant_id, actor=caller.actor, now=now, data=body
    )
    return ApiKeyCreated(**ApiKeyPublic.model_validate(key).model_dump(), key=token)


@router.get("")
def list_api_keys(session: SessionDep, caller: AdminDep, page: PaginationDep) -> Page[ApiKeyPublic]:
    """List the tenant's API keys (never their secrets)."""
    items, total = service.list_api_keys(
        session, caller.tenant_id, limit=page.limit, offset=page.offset
    )
    return Page[ApiKeyPublic](
        items=[ApiKeyPublic.model_validate(k) for k in items],
        total=total,
        limit=page.limit,
        offset=page.offset,
    )


@router.delete("/{key_id}")
def revoke_api_key(key_id: str, session: SessionDep, caller: AdminDep, now: NowDep) -> ApiKeyPublic:
    """Revoke an API key (idempotent); the last admin key cannot be revoked."""
    key = service.revoke_api_key(
        session, tenant_id=caller.tenant_id, actor=caller.actor, now=now, key_id=key_id
    )
    return ApiKeyPublic.model_validate(key)
