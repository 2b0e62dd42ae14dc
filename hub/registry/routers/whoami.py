"""``/api/v1/whoami``: who the presented API key belongs to."""

from __future__ import annotations

from fastapi import APIRouter

from hub.api.deps import SessionDep, ViewerDep
from hub.registry.models import Tenant
from hub.registry.schemas import WhoAmI

router = APIRouter(tags=["auth"])


@router.get("/whoami")
def whoami(session: SessionDep, caller: ViewerDep) -> WhoAmI:
    """The caller's tenant, key id and role."""
    tenant = session.get_one(Tenant, caller.tenant_id)
    return WhoAmI(
        tenant_id=tenant.id, tenant_name=tenant.name, key_id=caller.key_id, role=caller.role
    )
