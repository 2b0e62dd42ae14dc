"""End-to-end fixtures: a real ``hub serve`` process on each available backend.

``hub_backend`` runs the embedded default (amqtt + SQLite) always, and managed
Mosquitto + PostgreSQL when this machine has them (see tests/backends.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from simulator.processes import HubProcess
from tests.backends import mosquitto_binary, postgres_url
from tests.support.pg import fresh_schema


@dataclass(frozen=True)
class Backend:
    broker: str
    database: str

    def __str__(self) -> str:
        return f"{self.broker}+{self.database}"


def _backends() -> list[Backend]:
    found = [Backend("embedded", "sqlite")]
    if mosquitto_binary() or postgres_url():
        found.append(
            Backend(
                "mosquitto" if mosquitto_binary() else "embedded",
                "postgresql" if postgres_url() else "sqlite",
            )
        )
    return found


@pytest.fixture(scope="module", params=_backends(), ids=str)
def hub(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HubProcess]:
    """A running hub for the module; its log is printed if a test fails."""
    backend: Backend = request.param
    data_dir: Path = tmp_path_factory.mktemp(f"hub-{backend}")
    if backend.database == "postgresql":
        base = postgres_url()
        assert base is not None
        with fresh_schema(base) as url:
            yield from _run(HubProcess(data_dir=data_dir, broker=backend.broker, database_url=url))
    else:
        yield from _run(HubProcess(data_dir=data_dir, broker=backend.broker))


def _run(hub: HubProcess) -> Iterator[HubProcess]:
    hub.start()
    try:
        yield hub
    finally:
        status = hub.stop()
        assert status == 0, f"hub exited with {status}:\n{hub.log_tail()}"
