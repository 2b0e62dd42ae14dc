"""``/api/v1/usage``: totals, records, exports, gaps, conflicts, quarantine, leakage.

Every route is tenant-scoped for viewers and up; an ``account_id`` or
``device_id`` filter of another tenant is a 404. The window is ``[start,
end)`` on the device's ``recorded_at`` (``by=recorded``, the default) or on
the hub's ``received_at`` (``by=received``); omitted, it is the current UTC
calendar month.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session, sessionmaker

from hub.api.deps import Page, PaginationDep, SessionDep, ViewerDep
from hub.telemetry import export, queries, service
from hub.telemetry.routers.common import (
    GroupByQuery,
    ScopeDep,
    WindowDep,
    check_filters,
    parse_group_by,
    total_public,
)
from hub.telemetry.schemas import (
    Aggregation,
    LeakagePublic,
    UsageConflictPublic,
    UsageGapPublic,
    UsageQuarantinePublic,
    UsageRecordPublic,
    UsageRejectionPublic,
    UsageTotalsPublic,
)

router = APIRouter(prefix="/usage", tags=["usage"])


@router.get("")
def usage_totals(
    session: SessionDep,
    scope: ScopeDep,
    window: WindowDep,
    group_by: GroupByQuery = None,
    aggregation: Aggregation = "sum",
) -> UsageTotalsPublic:
    """Usage per group (default: per account and meter), aggregated as asked."""
    keys = parse_group_by(group_by, ("account_id", "meter"))
    totals = queries.aggregate(
        session, scope.records(window), group_by=keys, aggregation=aggregation
    )
    return UsageTotalsPublic(
        start=window.start,
        end=window.end,
        by=window.by,
        aggregation=aggregation,
        group_by=list(keys),
        items=[total_public(t) for t in totals],
    )


@router.get("/records")
def usage_records(
    session: SessionDep, scope: ScopeDep, window: WindowDep, page: PaginationDep
) -> Page[UsageRecordPublic]:
    """Stored records in time order, one page at a time."""
    rows, total = queries.page_records(
        session, scope.records(window), limit=page.limit, offset=page.offset
    )
    return Page[UsageRecordPublic](
        items=[UsageRecordPublic.model_validate(r) for r in rows],
        total=total,
        limit=page.limit,
        offset=page.offset,
    )


@router.get("/export")
def usage_export(
    request: Request,
    scope: ScopeDep,
    window: WindowDep,
    fmt: Annotated[export.ExportFormat, Query(alias="format")] = "csv",
) -> StreamingResponse:
    """Every matching record as CSV or JSON, streamed (see :mod:`hub.telemetry.export`)."""
    factory: sessionmaker[Session] = request.app.state.session_factory
    flt = scope.records(window)

    def body() -> Iterator[str]:
        # The request's session is closed once this returns: stream on our own.
        with factory() as session:
            rows = queries.iter_records(
                session,
                tenant_id=flt.tenant_id,
                start=flt.start,
                end=flt.end,
                account_id=flt.account_id,
                device_id=flt.device_id,
                meter=flt.meter,
                by_received=flt.by_received,
            )
            yield from export.chunks(rows, fmt)

    name = f"usage-{window.start:%Y%m%dT%H%M%SZ}-{window.end:%Y%m%dT%H%M%SZ}.{fmt}"
    return StreamingResponse(
        body(),
        media_type=export.MEDIA_TYPES[fmt],
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get("/leakage")
def usage_leakage(
    session: SessionDep, scope: ScopeDep, window: WindowDep, group_by: GroupByQuery = None
) -> LeakagePublic:
    """Usage no entitlement covered, and usage over its cap, summed per group."""
    keys = parse_group_by(group_by, ("device_id", "meter"))
    report = queries.leakage(
        session,
        tenant_id=scope.tenant_id,
        start=window.start,
        end=window.end,
        meter=scope.meter,
        device_id=scope.device_id,
        account_id=scope.account_id,
        group_by=keys,
        by_received=window.by == "received",
    )
    return LeakagePublic(
        start=window.start,
        end=window.end,
        group_by=list(keys),
        uncovered=[total_public(t) for t in report.uncovered],
        over_cap=[total_public(t) for t in report.over_cap],
        uncovered_total=sum((t.value for t in report.uncovered), queries.ZERO),
        over_cap_total=sum((t.value for t in report.over_cap), queries.ZERO),
    )


def _side_filter(session: Session, tenant_id: str, device_id: str | None) -> service.SideFilter:
    check_filters(session, tenant_id, None, device_id)
    return service.SideFilter(tenant_id=tenant_id, device_id=device_id)


def _page(items: list[Any], total: int, page: PaginationDep, schema: Any) -> Any:
    return Page[schema](
        items=[schema.model_validate(i) for i in items],
        total=total,
        limit=page.limit,
        offset=page.offset,
    )


DeviceFilter = Annotated[str | None, Query(max_length=64)]


@router.get("/gaps")
def usage_gaps(
    session: SessionDep,
    caller: ViewerDep,
    page: PaginationDep,
    device_id: DeviceFilter = None,
    open_only: Annotated[bool, Query(alias="open", description="only unfilled gaps")] = False,
) -> Page[UsageGapPublic]:
    """Runs of sequences never received (possible lost usage), newest first."""
    flt = _side_filter(session, caller.tenant_id, device_id)
    items, total = service.list_gaps(
        session, flt, open_only=open_only, limit=page.limit, offset=page.offset
    )
    result: Page[UsageGapPublic] = _page(items, total, page, UsageGapPublic)
    return result


@router.get("/conflicts")
def usage_conflicts(
    session: SessionDep, caller: ViewerDep, page: PaginationDep, device_id: DeviceFilter = None
) -> Page[UsageConflictPublic]:
    """Records offered under a stored key with different content, newest first."""
    flt = _side_filter(session, caller.tenant_id, device_id)
    items, total = service.list_conflicts(session, flt, limit=page.limit, offset=page.offset)
    result: Page[UsageConflictPublic] = _page(items, total, page, UsageConflictPublic)
    return result


@router.get("/quarantine")
def usage_quarantine(
    session: SessionDep, caller: ViewerDep, page: PaginationDep, device_id: DeviceFilter = None
) -> Page[UsageQuarantinePublic]:
    """Records outside the clock-skew window (kept, counted, never billed), newest first."""
    flt = _side_filter(session, caller.tenant_id, device_id)
    items, total = service.list_quarantine(session, flt, limit=page.limit, offset=page.offset)
    result: Page[UsageQuarantinePublic] = _page(items, total, page, UsageQuarantinePublic)
    return result


@router.get("/rejections")
def usage_rejections(
    session: SessionDep, caller: ViewerDep, page: PaginationDep, device_id: DeviceFilter = None
) -> Page[UsageRejectionPublic]:
    """Records refused as invalid (key and reason), newest first."""
    flt = _side_filter(session, caller.tenant_id, device_id)
    items, total = service.list_rejections(session, flt, limit=page.limit, offset=page.offset)
    result: Page[UsageRejectionPublic] = _page(items, total, page, UsageRejectionPublic)
    return result
