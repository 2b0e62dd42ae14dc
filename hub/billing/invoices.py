"""Invoices: store drafts, finalize them, read them.

An invoice is created ``draft`` when its period closes (one per currency the
period's charges use) and becomes ``finalized`` by the closing job (the
default) or ``POST /invoices/{id}/finalize``. Finalizing gives it the
tenant's next number (``INV-000001``, gap-free, in finalization order) and
logs ``invoice.finalized`` in the same transaction: the webhook fires for
exactly the invoices that are final. Lines never change after they are
stored; corrections arrive as adjustment lines on a later invoice.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hub.audit.service import record
from hub.billing import events
from hub.billing.models import BillingPeriod, Invoice, InvoiceLine, InvoiceSequence
from hub.billing.pricing import format_minor
from hub.billing.rating import LineDraft
from hub.billing.schemas import InvoiceLinePublic, InvoicePublic
from hub.errors import Conflict, NotFound

_KIND_ORDER = {"recurring": 0, "usage": 1, "adjustment": 2}


def _sort_key(draft: LineDraft, starts: dict[str, datetime]) -> tuple[object, ...]:
    return (
        _KIND_ORDER[draft.kind],
        starts[draft.period_id],
        draft.product_id,
        draft.meter or "",
    )


def store_drafts(
    session: Session,
    period: BillingPeriod,
    drafts: Sequence[LineDraft],
    *,
    cutoff: datetime,
    starts: dict[str, datetime],
    now: datetime,
) -> list[Invoice]:
    """Store the period's lines as draft invoices, one per currency.

    Args:
        session: the closing transaction.
        period: the period being closed.
        drafts: every line of the period (recurring, usage, adjustments).
        cutoff: usage received before this instant is on these invoices.
        starts: start of every period a line refers to (for ordering).
        now: creation time.

    Returns:
        The new invoices, by currency code.
    """
    by_currency: dict[str, list[LineDraft]] = defaultdict(list)
    for draft in drafts:
        by_currency[draft.currency].append(draft)
    invoices = []
    for currency in sorted(by_currency):
        lines = sorted(by_currency[currency], key=lambda d: _sort_key(d, starts))
        invoices.append(_store_one(session, period, currency, lines, cutoff=cutoff, now=now))
    return invoices


def _store_one(
    session: Session,
    period: BillingPeriod,
    currency: str,
    lines: list[LineDraft],
    *,
    cutoff: datetime,
    now: datetime,
) -> Invoice:
    subtotal = sum(d.amount for d in lines if d.kind != "adjustment")
    adjustments = sum(d.amount for d in lines if d.kind == "adjustment")
    invoice = Invoice(
        id=str(uuid.uuid4()), tenant_id=period.tenant_id, account_id=period.account_id,
        period_id=period.id, number=None, currency=currency, exponent=lines[0].exponent,
        status="draft", subtotal=subtotal, adjustments=adjustments,
        total=subtotal + adjustments, usage_cutoff=cutoff, created_at=now, finalized_at=None,
    )  # fmt: skip
    session.add(invoice)
    for position, draft in enumerate(lines, start=1):
        session.add(_line_row(invoice, position, draft))
    session.flush()
    record(
        session, tenant_id=period.tenant_id, actor="system", action="invoice.create",
        target_type="invoice", target_id=invoice.id, now=now,
        detail={"period_id": period.id, "currency": currency, "total": invoice.total,
                "lines": len(lines)},
    )  # fmt: skip
    return invoice


def _line_row(invoice: Invoice, position: int, draft: LineDraft) -> InvoiceLine:
    return InvoiceLine(
        tenant_id=invoice.tenant_id, invoice_id=invoice.id, position=position, kind=draft.kind,
        period_id=draft.period_id, product_id=draft.product_id, meter=draft.meter,
        plan_id=draft.ref.plan_id, plan=draft.ref.plan, aggregation=draft.ref.aggregation,
        description=draft.description, quantity=draft.quantity, amount=draft.amount,
        cumulative_quantity=draft.cumulative_quantity, cumulative_amount=draft.cumulative_amount,
        breakdown=draft.breakdown, basis=draft.basis,
    )  # fmt: skip


def _next_number(session: Session, tenant_id: str) -> str:
    """The tenant's next invoice number, under a row lock (gap-free)."""
    sequence = session.get(InvoiceSequence, tenant_id, with_for_update=True)
    if sequence is None:
        try:
            with session.begin_nested():
                session.add(InvoiceSequence(tenant_id=tenant_id, last_number=0))
                session.flush()
        except IntegrityError:  # created concurrently: lock theirs
            pass
        sequence = session.get(
            InvoiceSequence, tenant_id, with_for_update=True, populate_existing=True
        )
        assert sequence is not None
    sequence.last_number += 1
    return f"INV-{sequence.last_number:06d}"


def get_invoice(session: Session, tenant_id: str, invoice_id: str) -> Invoice:
    """The tenant's invoice ``invoice_id``.

    Raises:
        NotFound: no such invoice for this tenant.
    """
    invoice = session.get(Invoice, invoice_id)
    if invoice is None or invoice.tenant_id != tenant_id:
        raise NotFound(f"invoice {invoice_id} not found")
    return invoice


def finalize(
    session: Session, *, tenant_id: str, invoice_id: str, actor: str, now: datetime
) -> Invoice:
    """Finalize a draft: number it, log ``invoice.finalized`` (webhooks), audit.

    Raises:
        NotFound: no such invoice for this tenant.
        Conflict: it is already finalized.
    """
    invoice = get_invoice(session, tenant_id, invoice_id)
    session.refresh(invoice, with_for_update=True)
    if invoice.status != "draft":
        raise Conflict(f"invoice {invoice_id} is already {invoice.status}")
    invoice.number = _next_number(session, tenant_id)
    invoice.status = "finalized"
    invoice.finalized_at = now
    session.flush()
    record(
        session, tenant_id=tenant_id, actor=actor, action="invoice.finalize",
        target_type="invoice", target_id=invoice.id, now=now,
        detail={"number": invoice.number, "total": invoice.total, "currency": invoice.currency},
    )  # fmt: skip
    period = session.get_one(BillingPeriod, invoice.period_id)
    events.emit(
        session, tenant_id=tenant_id, event_type="invoice.finalized",
        dedup_key=f"invoice.finalized:{invoice.id}", now=now,
        payload=_event_payload(invoice, period),
    )  # fmt: skip
    return invoice


def _event_payload(invoice: Invoice, period: BillingPeriod) -> dict[str, object]:
    return {
        "invoice_id": invoice.id,
        "number": invoice.number,
        "account_id": invoice.account_id,
        "period_id": period.id,
        "period_start": period.starts_at.isoformat(),
        "period_end": period.ends_at.isoformat(),
        "currency": invoice.currency,
        "subtotal": invoice.subtotal,
        "adjustments": invoice.adjustments,
        "total": invoice.total,
        "total_decimal": format_minor(invoice.total, invoice.exponent),
    }


# ---------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class InvoiceFilter:
    """Optional filters of an invoice listing; ``None`` means any."""

    status: str | None = None
    account_id: str | None = None
    period_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def _filtered(query: Select[Any], tenant_id: str, flt: InvoiceFilter) -> Select[Any]:
    query = query.where(Invoice.tenant_id == tenant_id)
    for column, value in (
        (Invoice.status, flt.status),
        (Invoice.account_id, flt.account_id),
        (Invoice.period_id, flt.period_id),
    ):
        if value is not None:
            query = query.where(column == value)
    query = query.join(BillingPeriod, BillingPeriod.id == Invoice.period_id)
    if flt.since is not None:
        query = query.where(BillingPeriod.starts_at >= flt.since)
    if flt.until is not None:
        query = query.where(BillingPeriod.starts_at < flt.until)
    return query


def list_invoices(
    session: Session, tenant_id: str, flt: InvoiceFilter, *, limit: int, offset: int
) -> tuple[list[Invoice], int]:
    """A page of invoices, oldest first (creation, then period start, currency, id)."""
    count_query = _filtered(select(Invoice), tenant_id, flt).subquery()
    total = session.scalar(select(func.count()).select_from(count_query)) or 0
    query = _filtered(select(Invoice), tenant_id, flt)
    rows = session.scalars(
        query.order_by(Invoice.created_at, BillingPeriod.starts_at, Invoice.currency, Invoice.id)
        .limit(limit)
        .offset(offset)
    )
    return list(rows), total


def to_public(session: Session, invoices: Sequence[Invoice]) -> list[InvoicePublic]:
    """Invoices with their lines and period bounds (a few queries for the whole list)."""
    ids = [invoice.id for invoice in invoices]
    lines: dict[str, list[InvoiceLine]] = defaultdict(list)
    if ids:
        for line in session.scalars(
            select(InvoiceLine)
            .where(InvoiceLine.invoice_id.in_(ids))
            .order_by(InvoiceLine.invoice_id, InvoiceLine.position)
        ):
            lines[line.invoice_id].append(line)
    period_ids = {i.period_id for i in invoices} | {
        line.period_id for group in lines.values() for line in group
    }
    periods = {
        p.id: p
        for p in session.scalars(select(BillingPeriod).where(BillingPeriod.id.in_(period_ids)))
    }
    return [_public(invoice, lines[invoice.id], periods) for invoice in invoices]


def _public(
    invoice: Invoice, lines: list[InvoiceLine], periods: dict[str, BillingPeriod]
) -> InvoicePublic:
    period = periods[invoice.period_id]
    return InvoicePublic(
        id=invoice.id, number=invoice.number, account_id=invoice.account_id,
        period_id=invoice.period_id, period_start=period.starts_at, period_end=period.ends_at,
        status=invoice.status, currency=invoice.currency, exponent=invoice.exponent,
        subtotal=invoice.subtotal, adjustments=invoice.adjustments, total=invoice.total,
        total_decimal=format_minor(invoice.total, invoice.exponent),
        usage_cutoff=invoice.usage_cutoff, created_at=invoice.created_at,
        finalized_at=invoice.finalized_at,
        lines=[_line_public(line, invoice.exponent, periods[line.period_id]) for line in lines],
    )  # fmt: skip


def _line_public(line: InvoiceLine, exponent: int, period: BillingPeriod) -> InvoiceLinePublic:
    return InvoiceLinePublic(
        position=line.position, kind=line.kind, period_id=line.period_id,
        period_start=period.starts_at, period_end=period.ends_at, product_id=line.product_id,
        meter=line.meter, plan_id=line.plan_id, aggregation=line.aggregation,
        description=line.description, quantity=line.quantity, amount=line.amount,
        amount_decimal=format_minor(line.amount, exponent),
        cumulative_quantity=line.cumulative_quantity, cumulative_amount=line.cumulative_amount,
        breakdown=line.breakdown, basis=line.basis,
    )  # fmt: skip
