"""Tenant bootstrap: the only way to get a tenant's first API key."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy.orm import Session

from hub.audit.service import record
from hub.errors import ValidationFailed
from hub.registry import service
from hub.registry.models import Tenant
from hub.registry.schemas import ApiKeyCreate

BOOTSTRAP_KEY_NAME = "bootstrap-admin"


def create_tenant(
    session: Session, name: str, now: datetime, *, actor: str = "cli"
) -> tuple[Tenant, str]:
    """Create a tenant and its first admin API key.

    Args:
        session: open session; the caller commits.
        name: unique tenant name.
        now: creation time (tz-aware UTC).
        actor: audit actor (``cli`` for the bootstrap command).

    Returns:
        The tenant and the admin key in plaintext (shown once, stored hashed).

    Raises:
        Conflict: the name is taken.
        ValidationFailed: the name is empty or too long.
    """
    name = name.strip()
    if not 1 <= len(name) <= 200:
        raise ValidationFailed("tenant name must be 1-200 characters")
    tenant = Tenant(id=str(uuid.uuid4()), name=name, created_at=now)
    service.add_unique(session, tenant, f"a tenant named {name!r} already exists")
    record(
        session,
        tenant_id=tenant.id,
        actor=actor,
        action="tenant.create",
        target_type="tenant",
        target_id=tenant.id,
        now=now,
        detail={"name": name},
    )
    _, token = service.create_api_key(
        session,
        tenant_id=tenant.id,
        actor=actor,
        now=now,
        data=ApiKeyCreate(name=BOOTSTRAP_KEY_NAME, role="admin"),
    )
    return tenant, token
