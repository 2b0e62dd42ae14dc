"""Billing: price plans, periods, invoices, audit, events and webhooks.

:mod:`.pricing` is pure (no database, no clock, no float): :func:`price` turns
a :class:`Plan` and a quantity into a :class:`Charge`. :mod:`.plans` holds the
plan's JSON shape as the API accepts it; :mod:`.router` serves the preview.
The stateful part (tables, routers, jobs) plugs in through :mod:`.plugin`;
see docs/billing.md.
"""

from __future__ import annotations

from hub.billing.pricing import (
    Allowance,
    Charge,
    ChargeLine,
    Currency,
    FlatFee,
    Graduated,
    InvalidPlan,
    InvalidQuantity,
    Package,
    PerUnit,
    Plan,
    Tier,
    Volume,
    price,
)

__all__ = [
    "Allowance",
    "Charge",
    "ChargeLine",
    "Currency",
    "FlatFee",
    "Graduated",
    "InvalidPlan",
    "InvalidQuantity",
    "Package",
    "PerUnit",
    "Plan",
    "Tier",
    "Volume",
    "price",
]
