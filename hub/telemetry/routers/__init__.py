"""Telemetry routers, one module per resource, mounted under ``/api/v1``."""

from __future__ import annotations

from hub.telemetry.routers import meters, usage

ROUTERS = (usage.router, meters.router)

__all__ = ["ROUTERS"]
