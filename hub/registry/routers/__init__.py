"""Registry routers, one module per resource, mounted under ``/api/v1``."""

from __future__ import annotations

from fastapi import APIRouter

from hub.registry.routers import api_keys, claim_batches, device_classes, devices, products
from hub.registry.routers.whoami import router as whoami_router

registry_router = APIRouter()
for _module in (api_keys, products, device_classes, devices, claim_batches):
    registry_router.include_router(_module.router)
registry_router.include_router(whoami_router)

__all__ = ["registry_router"]
