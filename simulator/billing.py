"""A customer's subscription and its first closed billing period, through the REST API.

The hub bills monthly periods anchored on the start of the account's
subscription (docs/billing.md, "Billing periods"). To show a real invoice in
a run that lasts a minute, the customer's subscription *started a month ago*:
:func:`anchor_for` picks the start so that a period ends at a chosen instant
inside the run. Usage the devices record before that instant (device clock,
as the hub bills it) belongs to that period; once its grace window
(``HUB_BILLING_GRACE_SECONDS``) has passed, ``POST /billing/run`` closes it and
the hub writes the invoice. Nothing is computed here: the numbers are the
hub's, and :func:`metered_before` gives the devices' own count to hold them
against.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from simulator.components import METER_FEATURE
from simulator.hubapi import HubApi
from simulator.provision import Fleet
from simulator.recorder import BILLABLE_CODES, DeviceRecord


@dataclass(frozen=True, slots=True)
class Subscription:
    """What :func:`subscribe` created."""

    entitlement_id: str
    plan_id: str
    anchor: datetime
    months: int  # the period ending at ``period_end`` is the ``months``-th
    period_end: datetime


def anchor_for(period_end: datetime) -> tuple[datetime, int]:
    """A subscription start ``n >= 1`` calendar months before ``period_end``.

    The hub computes every period bound from the anchor (same day of month,
    clamped to the month's end), so period ``n - 1`` ends exactly at
    ``period_end`` when the anchor's month has ``period_end``'s day: the
    nearest such month back is taken (one month, except on days 29 to 31).

    Returns:
        The anchor and ``n``.
    """
    for n in range(1, 13):
        year, month0 = divmod(period_end.year * 12 + period_end.month - 1 - n, 12)
        if period_end.day <= calendar.monthrange(year, month0 + 1)[1]:
            return period_end.replace(year=year, month=month0 + 1), n
    raise AssertionError("every day of the month exists in some month of a year")


async def subscribe(
    api: HubApi, fleet: Fleet, *, period_end: datetime, quantity: int, plan: dict[str, Any]
) -> Subscription:
    """A subscription of the fleet's product whose period ends at ``period_end``, and a usage price.

    Raises:
        HubApiError: the hub refused a call.
    """
    anchor, months = anchor_for(period_end)
    body = {
        "account_id": fleet.account_id,
        "product_id": fleet.product_id,
        "license_model": "subscription",
        "quantity": quantity,
        "starts_at": anchor.isoformat(),
        "ends_at": (period_end + timedelta(days=365)).isoformat(),
        "reason": "the customer subscribed a month ago",
    }

    async def find_entitlement() -> Any | None:
        listed = await api.all_pages(
            "/entitlements", {"account_id": fleet.account_id, "product_id": fleet.product_id}
        )
        return next((e for e in listed if e["license_model"] == "subscription"), None)

    entitlement = await api.post_once("/entitlements", body, find_entitlement)
    path = f"/products/{fleet.product_id}/price-plans"

    async def find_plan() -> Any | None:
        for item in await api.all_pages(path):
            if item.get("meter") == METER_FEATURE and _same_instant(item["active_from"], anchor):
                return item
        return None

    price = await api.post_once(
        path,
        {
            "meter": METER_FEATURE,
            "aggregation": "sum",
            "plan": plan,
            "active_from": anchor.isoformat(),
            "description": "API calls",
        },
        find_plan,
    )
    return Subscription(entitlement["id"], price["id"], anchor, months, period_end)


def _same_instant(text: str, when: datetime) -> bool:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed == when


async def close_periods(api: HubApi) -> Any:
    """``POST /billing/run``: open due periods, close those past their grace window."""
    return await api.post("/billing/run")


async def invoices(api: HubApi, account_id: str) -> list[Any]:
    """Every invoice of the account, oldest first."""
    return await api.all_pages("/invoices", {"account_id": account_id})


def metered_before(records: Iterable[DeviceRecord], end: datetime) -> Decimal:
    """API calls the devices recorded before ``end`` (their clock) that the hub acknowledged."""
    cutoff = end.timestamp()
    total = Decimal(0)
    for record in records:
        for key, fields in record.usage_sent.items():
            if record.usage_acks.get(key) not in BILLABLE_CODES or len(fields) < 3:
                continue
            meter, quantity, ts = fields[0], fields[1], fields[2]
            if meter == METER_FEATURE and int(ts) < cutoff:
                try:
                    total += Decimal(str(quantity))
                except InvalidOperation:
                    continue
    return total
