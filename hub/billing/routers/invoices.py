"""``/api/v1/invoices``: list, show, export (CSV/JSON) and finalize invoices."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Response
from pydantic import AwareDatetime

from hub.api.deps import NowDep, OperatorDep, Page, PaginationDep, SessionDep, ViewerDep
from hub.billing import exports
from hub.billing import invoices as service
from hub.billing.schemas import InvoicePublic
from hub.errors import ValidationFailed

router = APIRouter(prefix="/invoices", tags=["billing"])

ExportFormat = Literal["json", "csv"]
MAX_EXPORT = 10_000
_PAGE = 500


def _download(body: str, fmt: ExportFormat, name: str) -> Response:
    media = "text/csv; charset=utf-8" if fmt == "csv" else "application/json"
    headers = {"Content-Disposition": f'attachment; filename="{name}.{fmt}"'}
    return Response(content=body, media_type=media, headers=headers)


def _render(invoices: list[InvoicePublic], fmt: ExportFormat, name: str) -> Response:
    if fmt == "csv":
        return _download(exports.invoices_csv(invoices), fmt, name)
    return _download(exports.invoices_json(invoices), fmt, name)


@router.get("", response_model=Page[InvoicePublic])
def list_invoices(
    *,
    session: SessionDep,
    caller: ViewerDep,
    page: PaginationDep,
    status: Literal["draft", "finalized"] | None = None,
    account_id: str | None = None,
    period_id: str | None = None,
    since: AwareDatetime | None = None,
    until: AwareDatetime | None = None,
    format: ExportFormat | None = None,
) -> Page[InvoicePublic] | Response:
    """List invoices (oldest first), or export every matching one with ``format``.

    ``since``/``until`` filter on the period start (inclusive/exclusive). With
    ``format=csv`` (one row per line) or ``format=json`` the answer is a
    download of *all* matching invoices (at most 10,000; narrow the filters
    beyond that) and ``limit``/``offset`` are ignored.
    """
    flt = service.InvoiceFilter(status, account_id, period_id, since, until)
    if format is None:
        rows, total = service.list_invoices(
            session, caller.tenant_id, flt, limit=page.limit, offset=page.offset
        )
        return Page[InvoicePublic](
            items=service.to_public(session, rows),
            total=total,
            limit=page.limit,
            offset=page.offset,
        )
    rows, total = service.list_invoices(session, caller.tenant_id, flt, limit=1, offset=0)
    if total > MAX_EXPORT:
        raise ValidationFailed(f"{total} invoices match; exports hold at most {MAX_EXPORT}")
    everything = []
    for offset in range(0, total, _PAGE):
        chunk, _ = service.list_invoices(session, caller.tenant_id, flt, limit=_PAGE, offset=offset)
        everything.extend(service.to_public(session, chunk))
    return _render(everything, format, "invoices")


@router.get("/{invoice_id}", response_model=InvoicePublic)
def get_invoice(
    invoice_id: str,
    session: SessionDep,
    caller: ViewerDep,
    format: ExportFormat | None = None,
) -> InvoicePublic | Response:
    """One invoice with its lines; ``format=csv|json`` downloads it."""
    invoice = service.get_invoice(session, caller.tenant_id, invoice_id)
    [public] = service.to_public(session, [invoice])
    if format is None:
        return public
    return _render([public], format, f"invoice-{invoice.number or invoice.id}")


@router.post("/{invoice_id}/finalize")
def finalize_invoice(
    invoice_id: str, session: SessionDep, caller: OperatorDep, now: NowDep
) -> InvoicePublic:
    """Finalize a draft: give it its number and send ``invoice.finalized`` (409 if final)."""
    invoice = service.finalize(
        session, tenant_id=caller.tenant_id, invoice_id=invoice_id, actor=caller.actor, now=now
    )
    [public] = service.to_public(session, [invoice])
    return public
