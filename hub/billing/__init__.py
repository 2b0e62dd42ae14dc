"""Billing: price plans and the charges they produce.

:mod:`.pricing` is pure (no database, no clock, no float): :func:`price` turns
a :class:`Plan` and a quantity into a :class:`Charge`. :mod:`.plans` holds the
plan's JSON shape as the API accepts it; :mod:`.router` serves the preview.
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
