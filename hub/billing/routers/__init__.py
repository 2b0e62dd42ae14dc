"""The billing plugin's REST routers (the stateless preview stays in :mod:`hub.billing.router`)."""

from __future__ import annotations

from fastapi import APIRouter

from hub.billing.routers.events import events_router, webhooks_router
from hub.billing.routers.invoices import router as invoices_router
from hub.billing.routers.operations import router as operations_router
from hub.billing.routers.price_plans import router as price_plans_router

ROUTERS: tuple[APIRouter, ...] = (
    price_plans_router,
    invoices_router,
    operations_router,
    events_router,
    webhooks_router,
)

__all__ = ["ROUTERS"]
