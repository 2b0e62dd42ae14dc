"""A locked or unreachable database answers 503 with Retry-After, never a bare 500."""

from __future__ import annotations

import logging

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError

from hub.api.deps import install_error_handlers


def test_a_locked_database_is_a_503_with_retry_after(caplog: pytest.LogCaptureFixture) -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/write")
    def write() -> None:
        statement, params = "UPDATE credentials SET password_hash=?", ("$7$secret-hash",)
        raise OperationalError(statement, params, Exception("database is locked"))

    with caplog.at_level(logging.WARNING), TestClient(app) as client:
        response = client.get("/write")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.json()["error"] == "database_busy"
    assert "database is locked" in caplog.text
    assert "secret-hash" not in caplog.text  # statement parameters are never logged
