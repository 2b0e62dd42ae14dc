"""The FastAPI application factory; nothing is built at import time."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from sqlalchemy.orm import Session, sessionmaker

from hub.analytics.router import router as analytics_router
from hub.api.deps import install_error_handlers
from hub.audit.router import router as audit_router
from hub.billing.router import router as billing_router
from hub.db.engine import make_engine, make_session_factory
from hub.entitlements.routers import entitlements_router
from hub.manifests.router import router as manifests_router
from hub.plugins import load_plugins
from hub.registry.routers import registry_router
from hub.settings import Settings

API_PREFIX = "/api/v1"


def create_app(
    settings: Settings, *, session_factory: sessionmaker[Session] | None = None
) -> FastAPI:
    """Build the hub's REST application.

    Args:
        settings: hub settings; the database URL is used when no factory is given.
        session_factory: sessions to use (tests and ``hub serve`` share one).

    Returns:
        The app, with ``app.state.session_factory`` and ``app.state.settings``
        set so more routers (entitlements, firmware, ...) can be mounted on it.
    """
    if session_factory is None:
        session_factory = make_session_factory(make_engine(settings.effective_database_url))
    app = FastAPI(
        title="IoT entitlement hub",
        version="1",
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    app.state.settings = settings
    app.state.session_factory = session_factory
    install_error_handlers(app)

    api = APIRouter(prefix=API_PREFIX)
    api.include_router(registry_router)
    api.include_router(audit_router)
    api.include_router(entitlements_router)
    api.include_router(manifests_router)
    api.include_router(analytics_router)
    api.include_router(billing_router)
    for plugin in load_plugins():
        for router in plugin.routers:
            api.include_router(router)
    app.include_router(api)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Liveness probe."""
        return {"status": "ok"}

    return app
