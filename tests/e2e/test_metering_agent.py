"""Metering end to end: usage recorded on a device is stored once on the hub.

A real ``hub serve`` (both backends, see conftest) and a real ``device-agent
run`` process with a ``[metering]`` table. The application side records
through :func:`device_agent.metering.api.open_meter` in this test process and
through the ``device-agent meter`` command, next to the running agent. The
hub's own database is read to check that every key minted on the device is
stored exactly once, across a SIGKILL, a restart and a replay of records the
hub had already stored (a lost acknowledgement).
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from device_agent.metering.api import buffer_stats, open_meter
from device_agent.metering.buffer import BUFFER_FILE
from hub.telemetry.models import UsageRecord as HubRecord
from protocols.usage_messages import UsageRecord
from simulator.processes import AgentProcess, HubProcess, wait_until

pytestmark = pytest.mark.e2e

METER = "api_calls"
RECORD_FIELDS = ("boot_epoch", "seq", "meter", "quantity", "ts", "dim")


@dataclass
class MeteredAgent(AgentProcess):
    """An agent process whose config also has a ``[metering]`` table.

    (``AgentProcess`` cannot pass extra tables yet; this appends one.)
    """

    metering: str = "[metering]\nretry_seconds = 2\nflush_seconds = 0\nbatch_max_records = 8\n"

    def write_config(self) -> Path:
        path = super().write_config()
        path.write_text(path.read_text() + "\n" + self.metering)
        return path

    @property
    def state_dir(self) -> Path:
        return self.directory / "state"


def _ok(response: httpx.Response) -> dict:
    assert response.status_code in (200, 201), response.text
    return response.json()


@pytest.fixture
def agent(hub: HubProcess, tmp_path: Path) -> Iterator[tuple[str, MeteredAgent, httpx.Client]]:
    """A claimed, online device whose manifest enables the metered feature."""
    serial = f"MT-{secrets.token_hex(3)}"
    with hub.api(hub.create_tenant(f"meter-{secrets.token_hex(3)}")) as api:
        cls = _ok(
            api.post(
                "/device-classes",
                json={
                    "name": "meter",
                    "vendor_id": "fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe",
                    "class_id": "1492af14-2569-5e48-bf42-9b2d51f2ab45",
                },
            )
        )
        product = _ok(api.post("/products", json={"sku": "API", "name": "API plan"}))
        _ok(
            api.post(
                f"/products/{product['id']}/features",
                json={
                    "key": METER,
                    "kind": "metered",
                    "cap_per_period": 1_000_000,
                    "period": "month",
                    "overage": "allow",
                },
            )
        )
        account = _ok(api.post("/accounts", json={"name": "Contoso"}))
        device = _ok(api.post("/devices", json={"serial": serial, "device_class_id": cls["id"]}))
        token = _ok(
            api.post(
                "/claim-batches", json={"name": serial, "serials": [serial], "ttl_seconds": 600}
            )
        )["token"]
        process = MeteredAgent(
            directory=tmp_path / serial,
            serial=serial,
            host="127.0.0.1",
            port=hub.mqtt_port,
            claim_port=hub.claim_port,
            token=token,
            heartbeat_seconds=1.0,
        )
        process.start()
        try:
            wait_until(
                lambda: api.get(f"/devices/{device['id']}").json()["online"], 60, what="online"
            )
            entitlement = _ok(
                api.post(
                    "/entitlements",
                    json={
                        "account_id": account["id"],
                        "product_id": product["id"],
                        "license_model": "perpetual",
                        "quantity": 1,
                    },
                )
            )
            _ok(
                api.post(
                    f"/entitlements/{entitlement['id']}/activations",
                    json={"device_id": device["id"]},
                )
            )
            wait_until(
                lambda: process.features()["features"].get(METER, {}).get("enabled"),
                30,
                what="metered feature enabled",
            )
            yield device["id"], process, api
        finally:
            process.stop()


def _record(state_dir: Path, count: int) -> list[UsageRecord]:
    """The application records ``count`` usages (integers and fractions)."""
    with open_meter(state_dir) as meter:
        return [meter.record(METER, n if n % 2 else n + 0.5).record for n in range(count)]


def _cli(agent: MeteredAgent, *args: str) -> subprocess.CompletedProcess[str]:
    config = str(agent.directory / "agent.toml")
    return subprocess.run(
        [sys.executable, "-m", "device_agent.cli", *args[:1], "--config", config, *args[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _drained(agent: MeteredAgent, acknowledged: int) -> bool:
    stats = buffer_stats(agent.state_dir)
    return stats.pending == 0 and stats.acknowledged == acknowledged


def _hub_rows(hub: HubProcess, device_id: str) -> list[tuple[int, int, Decimal]]:
    """The device's stored usage, read from the hub's own database."""
    url = hub.database_url or f"sqlite:///{hub.data_dir / 'hub.db'}"
    engine = create_engine(url)
    try:
        with Session(engine) as session:
            rows = session.execute(
                select(HubRecord.boot_epoch, HubRecord.seq, HubRecord.quantity)
                .where(HubRecord.device_id == device_id)
                .order_by(HubRecord.boot_epoch, HubRecord.seq)
            ).all()
    finally:
        engine.dispose()
    return [(e, s, q) for e, s, q in rows]


def _reinsert(state_dir: Path, records: list[UsageRecord]) -> None:
    """Put already-acknowledged records back, as if their ack had been lost."""
    db = sqlite3.connect(state_dir / BUFFER_FILE)
    with db:
        db.executemany(
            "INSERT INTO records (boot_epoch, seq, meter, quantity, ts, dim)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [(r.boot_epoch, r.seq, r.meter, r.quantity, r.ts, r.dim) for r in records],
        )
    db.close()  # the pending counter is recounted when the agent opens the buffer


def test_usage_is_stored_once_across_kill_restart_and_replay(
    hub: HubProcess, agent: tuple[str, MeteredAgent, httpx.Client]
) -> None:
    device_id, process, _api = agent
    minted = _record(process.state_dir, 20)
    cli = _cli(process, "meter", METER, "3")
    assert cli.returncode == 0, cli.stderr
    printed = json.loads(cli.stdout)
    minted.append(UsageRecord(**{k: printed[k] for k in RECORD_FIELDS}))
    first_epoch = minted[0].boot_epoch
    wait_until(lambda: _drained(process, 21), 60, what="first records acknowledged")

    process.kill()  # SIGKILL: the will marks it offline; the buffer is all that remains
    offline = _record(process.state_dir, 10)  # recorded while the agent is down
    assert {r.boot_epoch for r in offline} == {first_epoch}
    assert buffer_stats(process.state_dir).pending == 10
    process.start()  # a new boot epoch; the buffer is replayed on connect
    wait_until(lambda: _drained(process, 31), 60, what="offline records acknowledged")

    assert process.stop() == 0
    _reinsert(process.state_dir, offline)  # their acks "never arrived"
    process.start()
    wait_until(lambda: buffer_stats(process.state_dir).boot_epoch > first_epoch + 1, 30)
    later = _record(process.state_dir, 5)
    assert all(r.boot_epoch == first_epoch + 2 and r.seq <= 5 for r in later)
    wait_until(lambda: _drained(process, 46), 60, what="replay and new records acknowledged")

    usage = _cli(process, "usage")
    assert usage.returncode == 0, usage.stderr
    stats = json.loads(usage.stdout)
    assert stats["codes"] == {"stored": 36, "duplicate": 10}
    assert (stats["pending"], stats["dropped"]) == (0, 0)

    all_minted = minted + offline + later
    rows = _hub_rows(hub, device_id)
    assert len(rows) == len({(e, s) for e, s, _ in rows}) == 36  # each key stored once
    assert {(e, s) for e, s, _ in rows} == {r.key for r in all_minted}
    assert sorted(q for _, _, q in rows) == sorted(Decimal(str(r.quantity)) for r in all_minted)
