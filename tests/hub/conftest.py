"""Hub test fixtures: databases on every backend, sessions, app client, tenants.

``database_url`` is parametrized over SQLite (a temp file) and PostgreSQL when
``HUB_TEST_DATABASE_URL`` is set; each test module gets a fresh database (a
new schema on PostgreSQL, dropped afterwards). Tests isolate from each other by
creating their own tenants.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from hub.api.deps import get_now
from hub.app import create_app
from hub.db.engine import make_engine, make_session_factory
from hub.db.migrate import upgrade
from hub.registry import service
from hub.registry.schemas import ApiKeyCreate
from hub.registry.tenants import create_tenant
from hub.settings import Settings
from tests.backends import postgres_url

BACKENDS = ["sqlite"] + (["postgresql"] if postgres_url() else [])


@pytest.fixture(scope="module", params=BACKENDS)
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """An empty database: a fresh SQLite file or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'hub.db'}"
        return
    base = postgres_url()
    assert base is not None
    schema = f"t_{secrets.token_hex(6)}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(scope="module")
def migrated_url(database_url: str) -> str:
    """``database_url`` with the hub's migrations applied."""
    upgrade(database_url)
    return database_url


@pytest.fixture(scope="module")
def engine(migrated_url: str) -> Iterator[Engine]:
    """Engine on the migrated database."""
    eng = make_engine(migrated_url)
    yield eng
    eng.dispose()


@pytest.fixture(scope="module")
def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Session factory on the migrated database."""
    return make_session_factory(engine)


@pytest.fixture
def session(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session for direct service tests; rolled back unless the test commits."""
    with session_factory() as s:
        yield s
        s.rollback()


@dataclass
class Clock:
    """A settable clock, injected as the API's ``NowDep``."""

    now: datetime = field(default_factory=lambda: datetime(2030, 1, 1, 12, tzinfo=UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> datetime:
        self.now += timedelta(**kwargs)
        return self.now


@pytest.fixture
def clock() -> Clock:
    """The test clock (2030-01-01 12:00 UTC)."""
    return Clock()


@pytest.fixture
def app(session_factory: sessionmaker[Session], clock: Clock, tmp_path: Path) -> FastAPI:
    """The hub app on the test database with the test clock."""
    application = create_app(Settings(data_dir=tmp_path), session_factory=session_factory)
    application.dependency_overrides[get_now] = clock
    return application


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    """HTTP client for ``app`` (errors come back as responses, not exceptions)."""
    with TestClient(app, raise_server_exceptions=True) as c:
        yield c


@dataclass(frozen=True)
class TenantKeys:
    """A tenant with one API key per role."""

    tenant_id: str
    name: str
    admin: str
    operator: str
    viewer: str

    def headers(self, role: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {getattr(self, role)}"}


def make_tenant(
    factory: sessionmaker[Session], now: datetime, name: str | None = None
) -> TenantKeys:
    """Create a tenant with admin, operator and viewer keys (committed)."""
    name = name or f"tenant-{secrets.token_hex(4)}"
    with factory() as s:
        tenant, admin = create_tenant(s, name, now)
        keys = {
            role: service.create_api_key(
                s,
                tenant_id=tenant.id,
                actor="cli",
                now=now,
                data=ApiKeyCreate(name=role, role=role),  # type: ignore[arg-type]
            )[1]
            for role in ("operator", "viewer")
        }
        s.commit()
        return TenantKeys(tenant.id, name, admin, keys["operator"], keys["viewer"])


@pytest.fixture
def tenant(session_factory: sessionmaker[Session], clock: Clock) -> TenantKeys:
    """A fresh tenant with keys for every role."""
    return make_tenant(session_factory, clock.now)


@pytest.fixture
def other_tenant(session_factory: sessionmaker[Session], clock: Clock) -> TenantKeys:
    """A second, unrelated tenant."""
    return make_tenant(session_factory, clock.now)
