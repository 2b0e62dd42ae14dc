"""Turning quantities into invoice lines (pure: no database, no clock).

Three kinds of line, each priced by :func:`hub.billing.pricing.price` once,
on a whole period's quantity, so tiers and allowances apply to the period and
never to fragments of it:

- ``recurring``: a product's recurring fee, on the quantity the account is
  entitled to in the period;
- ``usage``: a metered feature's usage in the period, under the plan's
  aggregation;
- ``adjustment``: usage of an *earlier, closed* period that arrived after it
  closed. The line re-prices that period's whole quantity and charges the
  difference to what was already billed for it: ``amount = price(billed +
  late) - billed amount``. With tiers this is the only correct delta (late
  units may fall in a cheaper or dearer tier, or cross into a tier with a
  flat fee), and it makes billing exactly-once by construction: each period's
  cumulative charge always equals the price of its ground-truth quantity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from hub.billing.plans import ChargeOut, parse_plan
from hub.billing.pricing import Charge, price
from hub.billing.usage import canonical


@dataclass(frozen=True, slots=True)
class PlanRef:
    """The plan that prices a charge, as stored on its lines (a snapshot)."""

    plan_id: str | None
    plan: dict[str, Any]
    aggregation: str


@dataclass(frozen=True, slots=True)
class LineDraft:
    """An invoice line before it is stored."""

    kind: str
    period_id: str
    product_id: str
    meter: str | None
    ref: PlanRef
    description: str
    currency: str
    exponent: int
    quantity: Decimal
    amount: int
    cumulative_quantity: Decimal
    cumulative_amount: int
    breakdown: list[dict[str, Any]]
    basis: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Billed:
    """What has been billed so far for one charge of one period."""

    quantity: Decimal
    amount: int
    ref: PlanRef


def charge_of(ref: PlanRef, quantity: Decimal) -> Charge:
    """The charge ``quantity`` costs under the referenced plan."""
    return price(parse_plan(ref.plan), canonical(quantity))


def breakdown_of(charge: Charge) -> list[dict[str, Any]]:
    """A charge's lines as JSON (the preview's shape)."""
    return [line.model_dump(mode="json") for line in ChargeOut.from_charge(charge).lines]


def _describe(meter: str | None, aggregation: str, kind: str) -> str:
    if meter is None:
        return "recurring fee"
    what = f"{meter} ({aggregation})"
    return f"late usage: {what}" if kind == "adjustment" else f"usage: {what}"


def usage_line(
    period_id: str, product_id: str, meter: str, ref: PlanRef, quantity: Decimal
) -> LineDraft | None:
    """The usage line of one metered charge, or ``None`` if it is empty and free."""
    charge = charge_of(ref, quantity)
    if quantity == 0 and charge.total == 0:
        return None
    return LineDraft(
        kind="usage",
        period_id=period_id,
        product_id=product_id,
        meter=meter,
        ref=ref,
        description=_describe(meter, ref.aggregation, "usage"),
        currency=charge.currency.code,
        exponent=charge.currency.exponent,
        quantity=canonical(quantity),
        amount=charge.total,
        cumulative_quantity=canonical(quantity),
        cumulative_amount=charge.total,
        breakdown=breakdown_of(charge),
    )


def recurring_line(
    period_id: str, product_id: str, ref: PlanRef, entitlements: Sequence[dict[str, Any]]
) -> LineDraft | None:
    """The recurring fee on the entitled quantity, or ``None`` without entitlements."""
    if not entitlements:
        return None
    quantity = Decimal(sum(int(e["quantity"]) for e in entitlements))
    charge = charge_of(ref, quantity)
    return LineDraft(
        kind="recurring",
        period_id=period_id,
        product_id=product_id,
        meter=None,
        ref=ref,
        description=_describe(None, ref.aggregation, "recurring"),
        currency=charge.currency.code,
        exponent=charge.currency.exponent,
        quantity=quantity,
        amount=charge.total,
        cumulative_quantity=quantity,
        cumulative_amount=charge.total,
        breakdown=breakdown_of(charge),
        basis={"entitlements": list(entitlements)},
    )


def adjustment_line(
    period_id: str, product_id: str, meter: str, billed: Billed, quantity_now: Decimal
) -> LineDraft | None:
    """The correction for a closed period whose quantity changed, or ``None``.

    Args:
        period_id: the closed period being corrected.
        product_id: the charge's product.
        meter: the charge's metered feature.
        billed: quantity and amount billed for it so far, and the plan that priced it.
        quantity_now: the period's quantity recomputed with the late records.
    """
    if quantity_now == billed.quantity:
        return None
    charge = charge_of(billed.ref, quantity_now)
    return LineDraft(
        kind="adjustment",
        period_id=period_id,
        product_id=product_id,
        meter=meter,
        ref=billed.ref,
        description=_describe(meter, billed.ref.aggregation, "adjustment"),
        currency=charge.currency.code,
        exponent=charge.currency.exponent,
        quantity=canonical(quantity_now - billed.quantity),
        amount=charge.total - billed.amount,
        cumulative_quantity=canonical(quantity_now),
        cumulative_amount=charge.total,
        breakdown=breakdown_of(charge),
    )
