"""Revenue leakage in usage: what devices used that no invoice will charge for.

Three kinds, per account, device, metered feature and window (a billing
period, or any ``[start, end)``):

- ``uncovered``: usage no entitlement covered when it was recorded (no
  account to bill; from :func:`hub.telemetry.queries.leakage`);
- ``over_cap``: usage beyond the feature's cap in its cap period (billed if
  the product's plan prices it, but beyond what was sold as included);
- ``unpriced``: covered usage of a feature that has no price plan in force
  at the window's end: it will not appear on any invoice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy.orm import Session

from hub.billing.price_plans import plans_in_force
from hub.billing.usage import canonical
from hub.telemetry.queries import UsageTotal, leakage, usage_totals


@dataclass(frozen=True, slots=True)
class LeakageRow:
    """One group of leaked usage."""

    kind: str
    account_id: str | None
    device_id: str | None
    product_id: str | None
    meter: str
    period_start: datetime
    period_end: datetime
    quantity: Decimal
    records: int


def leakage_report(
    session: Session,
    *,
    tenant_id: str,
    start: datetime,
    end: datetime,
    account_id: str | None = None,
    meter: str | None = None,
    device_id: str | None = None,
) -> list[LeakageRow]:
    """Every leak in ``[start, end)`` on recorded time, by kind then keys."""
    found = leakage(
        session, tenant_id=tenant_id, start=start, end=end, meter=meter, device_id=device_id,
        account_id=account_id, group_by=("account_id", "device_id", "product_id", "meter"),
    )  # fmt: skip
    rows: list[LeakageRow] = []
    if account_id is None:
        rows.extend(_rows("uncovered", found.uncovered, start, end))
    rows.extend(_rows("over_cap", found.over_cap, start, end))
    covered = usage_totals(
        session, tenant_id=tenant_id, start=start, end=end, account_id=account_id, meter=meter,
        device_id=device_id, group_by=("account_id", "device_id", "product_id", "meter"),
        covered=True,
    )  # fmt: skip
    products = {str(t.keys["product_id"]) for t in covered if t.keys["product_id"]}
    plans = plans_in_force(session, tenant_id, products, end)
    unpriced = [
        t for t in covered if (str(t.keys["product_id"]), str(t.keys["meter"])) not in plans
    ]
    rows.extend(_rows("unpriced", unpriced, start, end))
    return rows


def _rows(kind: str, totals: list[UsageTotal], start: datetime, end: datetime) -> list[LeakageRow]:
    return [
        LeakageRow(
            kind=kind, account_id=t.keys.get("account_id"), device_id=t.keys.get("device_id"),
            product_id=t.keys.get("product_id"), meter=str(t.keys.get("meter")),
            period_start=start, period_end=end, quantity=canonical(t.value), records=t.records,
        )
        for t in totals
    ]  # fmt: skip
