"""Entitlement routers, one module per resource, mounted under ``/api/v1``.

Changes that alter what devices may use call the app's
``app.state.on_devices_changed(device_ids)`` hook, when one is installed,
after the transaction has committed (see :mod:`.common`).
"""

from __future__ import annotations

from fastapi import APIRouter

from hub.entitlements.routers import accounts, activations, device_views, entitlements, features

entitlements_router = APIRouter()
for _module in (accounts, features, entitlements, activations, device_views):
    entitlements_router.include_router(_module.router)

__all__ = ["entitlements_router"]
