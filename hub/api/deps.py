"""Shared FastAPI dependencies: session, caller, roles, clock, pagination, errors.

Use them through the ``Annotated`` aliases (``SessionDep``, ``CallerDep``,
``ViewerDep``, ``OperatorDep``, ``AdminDep``, ``NowDep``, ``PaginationDep``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from fastapi import BackgroundTasks, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from hub.db.busy import busy_reason
from hub.errors import HubError, PermissionDenied, Unauthenticated
from hub.registry.service import authenticate_api_key

log = logging.getLogger(__name__)

T = TypeVar("T")
Role = Literal["admin", "operator", "viewer"]
ROLE_RANK: dict[str, int] = {"viewer": 0, "operator": 1, "admin": 2}

MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 50


def get_session(request: Request) -> Iterator[Session]:
    """One session per request: commit on success, roll back on any error.

    Registered with ``scope="function"`` so the commit happens before the
    response is sent: a client never sees success for a failed commit.
    """
    factory: sessionmaker[Session] = request.app.state.session_factory
    with factory() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def get_now() -> datetime:
    """The request's clock: tz-aware UTC now (override in tests)."""
    return datetime.now(UTC)


NowDep = Annotated[datetime, Depends(get_now)]


DeviceAccessHook = Callable[[str], None]


def device_access_notifier(request: Request, background: BackgroundTasks) -> DeviceAccessHook:
    """Schedule ``app.state.device_access_changed(device_id)`` for after the response.

    Background tasks run after the request's session has committed, so the
    broker is refreshed (and the device's live session closed) only once the
    change is durable. Without a hook (tests, plain ``create_app``) it is a no-op.
    """
    hook: DeviceAccessHook | None = getattr(request.app.state, "device_access_changed", None)

    def notify(device_id: str) -> None:
        if hook is not None:
            background.add_task(hook, device_id)

    return notify


DeviceAccessDep = Annotated[DeviceAccessHook, Depends(device_access_notifier)]

# Declared as security schemes so /docs offers an "Authorize" button.
_bearer = HTTPBearer(auto_error=False, description="API key: `hubk_<keyid>_<secret>`")
_header_key = APIKeyHeader(name="X-API-Key", auto_error=False)


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated API client."""

    tenant_id: str
    key_id: str
    role: str

    @property
    def actor(self) -> str:
        """How this caller appears in the audit log."""
        return f"key:{self.key_id}"


def get_caller(
    session: SessionDep,
    now: NowDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header_key: Annotated[str | None, Depends(_header_key)],
) -> Caller:
    """Resolve ``Authorization: Bearer`` (or ``X-API-Key``) to the caller.

    Raises:
        Unauthenticated: no key, or one that is unknown, wrong or revoked.
    """
    token = bearer.credentials if bearer is not None else header_key
    if not token:
        raise Unauthenticated("missing API key")
    key = authenticate_api_key(session, token.strip(), now)
    return Caller(tenant_id=key.tenant_id, key_id=key.id, role=key.role)


CallerDep = Annotated[Caller, Depends(get_caller)]


def require_role(minimum: Role) -> Callable[[Caller], Caller]:
    """Dependency factory admitting callers whose role is at least ``minimum``.

    Roles are ordered viewer < operator < admin.
    """

    def check(caller: CallerDep) -> Caller:
        if ROLE_RANK[caller.role] < ROLE_RANK[minimum]:
            raise PermissionDenied(f"requires role {minimum}")
        return caller

    return check


ViewerDep = Annotated[Caller, Depends(require_role("viewer"))]
OperatorDep = Annotated[Caller, Depends(require_role("operator"))]
AdminDep = Annotated[Caller, Depends(require_role("admin"))]


@dataclass(frozen=True, slots=True)
class Pagination:
    """Requested page window."""

    limit: int
    offset: int


def get_pagination(
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Pagination:
    """Read ``limit`` (1..500, default 50) and ``offset`` from the query."""
    return Pagination(limit=limit, offset=offset)


PaginationDep = Annotated[Pagination, Depends(get_pagination)]


class Page(BaseModel, Generic[T]):
    """One page of a list endpoint."""

    items: list[T]
    total: int
    limit: int
    offset: int


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """The JSON shape of every error the API returns."""
    body: dict[str, Any] = {"error": code, "message": message}
    if details is not None:
        body["details"] = details
    return body


async def _hub_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HubError)
    status = exc.http_status
    # Messages never carry secrets; logging them is safe.
    log.log(
        logging.WARNING if status >= 500 else logging.INFO,
        "%s %s -> %d %s: %s",
        request.method,
        request.url.path,
        status,
        exc.code,
        exc,
    )
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthenticated) else None
    body = error_body(exc.code, str(exc), getattr(exc, "details", None))
    return JSONResponse(body, status_code=status, headers=headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
        for err in exc.errors()
    ]
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(part) for part in first["loc"])
    message = f"{where}: {first['msg']}" if where else str(first["msg"])
    return JSONResponse(error_body("validation_failed", message, errors), status_code=422)


def install_error_handlers(app: FastAPI) -> None:
    """Map HubError (and request validation errors) to ``{"error", "message"}``."""
    app.add_exception_handler(HubError, _hub_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(OperationalError, _database_busy)


async def _database_busy(request: Request, exc: Exception) -> JSONResponse:
    """A database outage or lock timeout (SQLite under write load): 503, retry.

    Only the driver's own message is logged: the statement's parameters could
    carry credential hashes.
    """
    assert isinstance(exc, OperationalError)
    reason = busy_reason(exc)
    log.warning("%s %s -> 503 database_busy: %s", request.method, request.url.path, reason)
    body = error_body("database_busy", "the database is busy or unavailable; retry shortly")
    return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})
