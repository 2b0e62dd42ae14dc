"""Price plans attached to products: create, read, change, delete, resolve.

A product has at most one plan *in force* per charge at any instant: the
recurring fee (``meter`` null) and one plan per metered feature. Among the
plans of one charge, the one with the latest ``active_from`` strictly before
a period's end prices that whole period (ties: the later created). A plan an
invoice has used is frozen: change prices by adding a plan with a later
``active_from``. Every change is audited.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hub.audit.service import record
from hub.billing import plans
from hub.billing.models import InvoiceLine, PricePlan
from hub.billing.pricing import Plan
from hub.billing.schemas import PricePlanCreate, PricePlanUpdate
from hub.entitlements.models import Feature
from hub.errors import Conflict, NotFound, ValidationFailed
from hub.registry.service import get_product

_PLAN_JSON: TypeAdapter[plans.PlanIn] = TypeAdapter(plans.PlanIn)
ChargeKey = tuple[str, str | None]
"""``(product_id, meter)``; ``meter`` is ``None`` for the recurring fee."""


def domain_plan(stored: dict[str, Any]) -> Plan:
    """The pricing plan of a stored plan JSON (raises InvalidPlan if it is not priceable)."""
    return plans.parse_plan(stored)


def _plan_json(plan: plans.PlanIn) -> tuple[dict[str, Any], str]:
    """Canonical JSON of a validated plan, and its currency (raises InvalidPlan)."""
    domain = plans.to_plan(plan)
    return _PLAN_JSON.dump_python(plan, mode="json"), domain.currency.code


def _check_meter(session: Session, tenant_id: str, product_id: str, meter: str | None) -> None:
    if meter is None:
        return
    feature = session.scalar(
        select(Feature).where(
            Feature.tenant_id == tenant_id,
            Feature.product_id == product_id,
            Feature.key == meter,
        )
    )
    if feature is None or feature.kind != "metered":
        raise ValidationFailed(f"meter {meter!r} is not a metered feature of product {product_id}")


def create_plan(
    session: Session,
    *,
    tenant_id: str,
    actor: str,
    now: datetime,
    product_id: str,
    data: PricePlanCreate,
) -> PricePlan:
    """Attach a plan to a product.

    Raises:
        NotFound: no such product for this tenant.
        ValidationFailed: unknown metered feature, or an aggregation on the recurring fee.
        InvalidPlan: the plan cannot be priced.
        Conflict: a plan of the same charge is already active from that instant.
    """
    get_product(session, tenant_id, product_id)
    _check_meter(session, tenant_id, product_id, data.meter)
    if data.meter is None and data.aggregation != "sum":
        raise ValidationFailed("the recurring fee (no meter) has no aggregation")
    plan_json, currency = _plan_json(data.plan)
    active_from = data.active_from or now
    _check_free_slot(
        session,
        tenant_id=tenant_id,
        product_id=product_id,
        meter=data.meter,
        active_from=active_from,
        exclude=None,
    )
    row = PricePlan(
        id=str(uuid.uuid4()),
        tenant_id=tenant_id,
        product_id=product_id,
        meter=data.meter,
        aggregation=data.aggregation,
        plan=plan_json,
        currency=currency,
        description=data.description,
        active_from=active_from,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    session.flush()
    record(
        session, tenant_id=tenant_id, actor=actor, action="price_plan.create",
        target_type="price_plan", target_id=row.id, now=now,
        detail={"product_id": product_id, "meter": data.meter, "currency": currency,
                "model": plan_json["model"], "active_from": active_from.isoformat()},
    )  # fmt: skip
    return row


def _check_free_slot(
    session: Session,
    *,
    tenant_id: str,
    product_id: str,
    meter: str | None,
    active_from: datetime,
    exclude: str | None,
) -> None:
    query = select(PricePlan.id).where(
        PricePlan.tenant_id == tenant_id,
        PricePlan.product_id == product_id,
        PricePlan.meter.is_(None) if meter is None else PricePlan.meter == meter,
        PricePlan.active_from == active_from,
    )
    if exclude is not None:
        query = query.where(PricePlan.id != exclude)
    taken = session.scalar(query.limit(1))
    if taken is not None:
        raise Conflict(f"plan {taken} of this charge is already active from {active_from}")


def get_plan(session: Session, tenant_id: str, product_id: str, plan_id: str) -> PricePlan:
    """One plan of the tenant's product.

    Raises:
        NotFound: no such plan (or product) for this tenant.
    """
    row = session.get(PricePlan, plan_id)
    if row is None or row.tenant_id != tenant_id or row.product_id != product_id:
        raise NotFound(f"price plan {plan_id} not found")
    return row


def list_plans(
    session: Session, tenant_id: str, product_id: str, *, limit: int, offset: int
) -> tuple[list[PricePlan], int]:
    """A page of a product's plans by charge, then ``active_from`` (newest first)."""
    get_product(session, tenant_id, product_id)
    where = (PricePlan.tenant_id == tenant_id, PricePlan.product_id == product_id)
    total = session.scalar(select(func.count()).select_from(PricePlan).where(*where)) or 0
    rows = session.scalars(
        select(PricePlan)
        .where(*where)
        .order_by(
            PricePlan.meter.is_not(None),
            PricePlan.meter,
            PricePlan.active_from.desc(),
            PricePlan.id,
        )
        .limit(limit)
        .offset(offset)
    )
    return list(rows), total


def _check_unused(session: Session, row: PricePlan) -> None:
    used = session.scalar(select(InvoiceLine.id).where(InvoiceLine.plan_id == row.id).limit(1))
    if used is not None:
        raise Conflict(
            f"price plan {row.id} has priced an invoice and is frozen; "
            "add a plan with a later active_from instead"
        )


def update_plan(
    session: Session,
    *,
    tenant_id: str,
    actor: str,
    now: datetime,
    product_id: str,
    plan_id: str,
    data: PricePlanUpdate,
) -> PricePlan:
    """Change a plan no invoice has used.

    Raises:
        NotFound: no such plan.
        Conflict: an invoice used it, or the new ``active_from`` is taken.
        InvalidPlan: the new plan cannot be priced.
    """
    row = get_plan(session, tenant_id, product_id, plan_id)
    _check_unused(session, row)
    changed: list[str] = []
    if data.plan is not None:
        row.plan, row.currency = _plan_json(data.plan)
        changed.append("plan")
    if data.aggregation is not None and data.aggregation != row.aggregation:
        if row.meter is None:
            raise ValidationFailed("the recurring fee (no meter) has no aggregation")
        row.aggregation = data.aggregation
        changed.append("aggregation")
    if data.active_from is not None and data.active_from != row.active_from:
        _check_free_slot(
            session,
            tenant_id=tenant_id,
            product_id=product_id,
            meter=row.meter,
            active_from=data.active_from,
            exclude=row.id,
        )
        row.active_from = data.active_from
        changed.append("active_from")
    if data.description is not None:
        row.description = data.description
        changed.append("description")
    row.updated_at = now
    record(
        session, tenant_id=tenant_id, actor=actor, action="price_plan.update",
        target_type="price_plan", target_id=row.id, now=now, detail={"changed": changed},
    )  # fmt: skip
    return row


def delete_plan(
    session: Session, *, tenant_id: str, actor: str, now: datetime, product_id: str, plan_id: str
) -> None:
    """Delete a plan no invoice has used.

    Raises:
        NotFound: no such plan.
        Conflict: an invoice used it.
    """
    row = get_plan(session, tenant_id, product_id, plan_id)
    _check_unused(session, row)
    session.delete(row)
    record(
        session, tenant_id=tenant_id, actor=actor, action="price_plan.delete",
        target_type="price_plan", target_id=plan_id, now=now,
        detail={"product_id": product_id, "meter": row.meter},
    )  # fmt: skip


def plans_in_force(
    session: Session,
    tenant_id: str,
    product_ids: Iterable[str],
    before: datetime,
    *,
    created_before: datetime | None = None,
) -> dict[ChargeKey, PricePlan]:
    """For each charge of ``product_ids``, the plan active latest before ``before``.

    Args:
        session: any session.
        tenant_id: the tenant.
        product_ids: the products to look at.
        before: the period's end; plans with ``active_from < before`` qualify.
        created_before: for a period already closed, its ``closed_at``: a plan
            created later (even with an earlier ``active_from``) never reprices it.

    Returns:
        ``{(product_id, meter): plan}`` for every charge that has one.
    """
    ids = sorted(set(product_ids))
    if not ids:
        return {}
    rows = session.scalars(
        select(PricePlan)
        .where(
            PricePlan.tenant_id == tenant_id,
            PricePlan.product_id.in_(ids),
            PricePlan.active_from < before,
            *(() if created_before is None else (PricePlan.created_at <= created_before,)),
        )
        .order_by(PricePlan.active_from, PricePlan.created_at, PricePlan.id)
    )
    found: dict[ChargeKey, PricePlan] = {}
    for row in rows:
        found[(row.product_id, row.meter)] = row  # later rows win
    return found
