"""Meters and the usage side tables, for the REST API (tenant-scoped).

Meters are created here (audited); their values come from
:func:`hub.telemetry.queries.usage_totals`. Gaps, conflicts, quarantine and
rejections are read-only pages: ingestion alone writes them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hub.audit.service import record
from hub.entitlements.models import Feature
from hub.errors import Conflict, NotFound, ValidationFailed
from hub.telemetry.models import Meter, UsageConflict, UsageGap, UsageQuarantine, UsageRejection
from hub.telemetry.schemas import MeterCreate


def _page(session: Session, query: Select[Any], limit: int, offset: int) -> tuple[list[Any], int]:
    total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    return list(session.scalars(query.limit(limit).offset(offset))), int(total or 0)


def create_meter(
    session: Session, *, tenant_id: str, actor: str, now: datetime, data: MeterCreate
) -> Meter:
    """Create a billable metric over one of the tenant's metered features.

    Raises:
        ValidationFailed: no product of the tenant has a metered feature ``feature_key``.
        Conflict: the tenant has a meter of that name.
    """
    metered = session.scalar(
        select(func.count())
        .select_from(Feature)
        .where(
            Feature.tenant_id == tenant_id,
            Feature.key == data.feature_key,
            Feature.kind == "metered",
        )
    )
    if not metered:
        raise ValidationFailed(f"no product has a metered feature {data.feature_key!r}")
    meter = Meter(id=str(uuid.uuid4()), tenant_id=tenant_id, created_at=now, **data.model_dump())
    try:
        with session.begin_nested():
            session.add(meter)
            session.flush()
    except IntegrityError:
        raise Conflict(f"a meter named {data.name!r} exists") from None
    record(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="meter.create",
        target_type="meter",
        target_id=meter.id,
        now=now,
        detail=data.model_dump(),
    )
    return meter


def get_meter(session: Session, tenant_id: str, meter_id: str) -> Meter:
    """The tenant's meter, by id or by name.

    Raises:
        NotFound: no such meter for this tenant.
    """
    meter = session.scalar(
        select(Meter).where(
            Meter.tenant_id == tenant_id, (Meter.id == meter_id) | (Meter.name == meter_id)
        )
    )
    if meter is None:
        raise NotFound(f"no meter {meter_id!r}")
    return meter


def list_meters(
    session: Session, tenant_id: str, *, limit: int, offset: int
) -> tuple[list[Meter], int]:
    """The tenant's meters by name."""
    query = select(Meter).where(Meter.tenant_id == tenant_id).order_by(Meter.name)
    return _page(session, query, limit, offset)


@dataclass(frozen=True, slots=True)
class SideFilter:
    """Filters of the side-table pages; ``None`` means any."""

    tenant_id: str
    device_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def _side(model: Any, flt: SideFilter, moment: Any) -> Select[Any]:
    query = select(model).where(model.tenant_id == flt.tenant_id)
    if flt.device_id is not None:
        query = query.where(model.device_id == flt.device_id)
    if flt.since is not None:
        query = query.where(moment >= flt.since)
    if flt.until is not None:
        query = query.where(moment < flt.until)
    return query


def list_gaps(
    session: Session, flt: SideFilter, *, open_only: bool, limit: int, offset: int
) -> tuple[list[UsageGap], int]:
    """Gaps (possible lost usage), newest detection first; ``open_only``: not yet filled."""
    query = _side(UsageGap, flt, UsageGap.detected_at)
    if open_only:
        query = query.where(UsageGap.closed_at.is_(None))
    query = query.order_by(UsageGap.detected_at.desc(), UsageGap.id.desc())
    return _page(session, query, limit, offset)


def list_conflicts(
    session: Session, flt: SideFilter, *, limit: int, offset: int
) -> tuple[list[UsageConflict], int]:
    """Conflicting offers, newest first."""
    query = _side(UsageConflict, flt, UsageConflict.received_at)
    query = query.order_by(UsageConflict.received_at.desc(), UsageConflict.id.desc())
    return _page(session, query, limit, offset)


def list_quarantine(
    session: Session, flt: SideFilter, *, limit: int, offset: int
) -> tuple[list[UsageQuarantine], int]:
    """Quarantined records, newest first."""
    query = _side(UsageQuarantine, flt, UsageQuarantine.received_at)
    query = query.order_by(UsageQuarantine.received_at.desc(), UsageQuarantine.id.desc())
    return _page(session, query, limit, offset)


def list_rejections(
    session: Session, flt: SideFilter, *, limit: int, offset: int
) -> tuple[list[UsageRejection], int]:
    """Rejected records, newest first."""
    query = _side(UsageRejection, flt, UsageRejection.received_at)
    query = query.order_by(UsageRejection.received_at.desc(), UsageRejection.id.desc())
    return _page(session, query, limit, offset)
