"""``/api/v1/meters``: billable metrics and their values per account, device and period."""

from __future__ import annotations

from fastapi import APIRouter, status

from hub.api.deps import NowDep, OperatorDep, Page, PaginationDep, SessionDep, ViewerDep
from hub.telemetry import queries, service
from hub.telemetry.routers.common import (
    GroupByQuery,
    WindowDep,
    check_filters,
    parse_group_by,
    total_public,
)
from hub.telemetry.schemas import MeterCreate, MeterPublic, MeterValuePublic

router = APIRouter(prefix="/meters", tags=["meters"])


@router.post("", status_code=status.HTTP_201_CREATED)
def create_meter(
    body: MeterCreate, session: SessionDep, caller: OperatorDep, now: NowDep
) -> MeterPublic:
    """Define a billable metric: one aggregation of one metered feature's usage."""
    meter = service.create_meter(
        session, tenant_id=caller.tenant_id, actor=caller.actor, now=now, data=body
    )
    return MeterPublic.model_validate(meter)


@router.get("")
def list_meters(session: SessionDep, caller: ViewerDep, page: PaginationDep) -> Page[MeterPublic]:
    """The tenant's meters by name."""
    items, total = service.list_meters(
        session, caller.tenant_id, limit=page.limit, offset=page.offset
    )
    return Page[MeterPublic](
        items=[MeterPublic.model_validate(m) for m in items],
        total=total,
        limit=page.limit,
        offset=page.offset,
    )


@router.get("/{meter_id}")
def get_meter(meter_id: str, session: SessionDep, caller: ViewerDep) -> MeterPublic:
    """One meter, by id or name."""
    return MeterPublic.model_validate(service.get_meter(session, caller.tenant_id, meter_id))


@router.get("/{meter_id}/value")
def meter_value(
    *,
    meter_id: str,
    session: SessionDep,
    caller: ViewerDep,
    window: WindowDep,
    account_id: str | None = None,
    device_id: str | None = None,
    group_by: GroupByQuery = None,
) -> MeterValuePublic:
    """The meter per group (default: per account) in the window."""
    meter = service.get_meter(session, caller.tenant_id, meter_id)
    check_filters(session, caller.tenant_id, account_id, device_id)
    keys = parse_group_by(group_by, ("account_id",))
    totals = queries.usage_totals(
        session,
        tenant_id=caller.tenant_id,
        start=window.start,
        end=window.end,
        account_id=account_id,
        device_id=device_id,
        meter=meter.feature_key,
        group_by=keys,
        aggregation=meter.aggregation,
        by_received=window.by == "received",
    )
    return MeterValuePublic(
        meter=MeterPublic.model_validate(meter),
        start=window.start,
        end=window.end,
        by=window.by,
        group_by=list(keys),
        items=[total_public(t) for t in totals],
    )
