"""Firmware fixtures: the :class:`~tests.hub.firmware.world.World` on every backend."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from tests.hub.conftest import Clock
from tests.hub.firmware.world import World, make_world


@pytest.fixture
def world(
    app: FastAPI,
    client: TestClient,
    session_factory: sessionmaker[Session],
    clock: Clock,
    tmp_path: Path,
) -> World:
    """A fresh tenant's firmware world."""
    return make_world(app, client, session_factory, clock, tmp_path)
