"""Entitlements end to end: REST change → signed manifest over MQTT → the agent enforces it.

Every check of what a device may use asks the real agent's own trust store
(``device-agent features``), so it covers signing, delivery, verification,
persistence and the lease rule together.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from simulator.processes import AgentProcess, HubProcess, wait_until
from tests.backends import postgres_url
from tests.e2e.conftest import Backend, _backends
from tests.support.pg import fresh_schema

pytestmark = pytest.mark.e2e

LEASE = 120  # seconds: short, so the offline-device case can be checked at now + LEASE


@pytest.fixture(scope="module", params=_backends(), ids=str)
def hub(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HubProcess]:
    backend: Backend = request.param
    env = {
        "HUB_MANIFEST_LEASE_SECONDS": str(LEASE),
        "HUB_MANIFEST_RENEW_BEFORE_SECONDS": "10",
        "HUB_SEAT_TIMEOUT_SECONDS": "30",
    }
    data_dir = tmp_path_factory.mktemp(f"ent-{backend}")
    if backend.database == "postgresql":
        base = postgres_url()
        assert base is not None
        with fresh_schema(base) as url:
            yield from _run(HubProcess(data_dir, backend.broker, url, extra_env=env))
    else:
        yield from _run(HubProcess(data_dir, backend.broker, extra_env=env))


def _run(hub: HubProcess) -> Iterator[HubProcess]:
    hub.start()
    try:
        yield hub
    finally:
        assert hub.stop() == 0, hub.log_tail()


@dataclass
class Catalog:
    api: httpx.Client
    class_id: str
    product_id: str
    account_id: str


@pytest.fixture(scope="module")
def catalog(hub: HubProcess) -> Iterator[Catalog]:
    with hub.api(hub.create_tenant(f"ent-{secrets.token_hex(3)}")) as api:
        cls = _ok(
            api.post(
                "/device-classes",
                json={
                    "name": "gateway",
                    "vendor_id": "fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe",
                    "class_id": "1492af14-2569-5e48-bf42-9b2d51f2ab45",
                },
            )
        )
        product = _ok(api.post("/products", json={"sku": "GW-PRO", "name": "Gateway Pro"}))
        _ok(
            api.post(f"/products/{product['id']}/features", json={"key": "premium", "kind": "flag"})
        )
        _ok(
            api.post(
                f"/products/{product['id']}/features",
                json={"key": "max_users", "kind": "limit", "default_limit": 25},
            )
        )
        account = _ok(api.post("/accounts", json={"name": "Contoso"}))
        yield Catalog(api, cls["id"], product["id"], account["id"])


def _ok(response: httpx.Response) -> dict:
    assert response.status_code in (200, 201), response.text
    return response.json()


def _device_with_agent(
    hub: HubProcess, cat: Catalog, tmp_path: Path, serial: str, **agent
) -> tuple[str, AgentProcess]:
    device = _ok(cat.api.post("/devices", json={"serial": serial, "device_class_id": cat.class_id}))
    token = _ok(
        cat.api.post(
            "/claim-batches", json={"name": serial, "serials": [serial], "ttl_seconds": 600}
        )
    )["token"]
    process = AgentProcess(
        directory=tmp_path / serial,
        serial=serial,
        host="127.0.0.1",
        port=hub.mqtt_port,
        claim_port=hub.claim_port,
        token=token,
        heartbeat_seconds=1.0,
        **agent,
    )
    process.start()
    wait_until(
        lambda: cat.api.get(f"/devices/{device['id']}").json()["online"],
        60,
        what=f"{serial} online",
    )
    return device["id"], process


def _entitlement(cat: Catalog, model: str, quantity: int) -> str:
    return _ok(
        cat.api.post(
            "/entitlements",
            json={
                "account_id": cat.account_id,
                "product_id": cat.product_id,
                "license_model": model,
                "quantity": quantity,
            },
        )
    )["id"]


def _premium(agent: AgentProcess, now: int | None = None) -> bool:
    return bool(agent.features(now)["features"].get("premium", {}).get("enabled"))


def _acknowledged(cat: Catalog, device_id: str) -> dict | None:
    response = cat.api.get(f"/devices/{device_id}/manifest")
    if response.status_code != 200:
        return None
    manifest = response.json()
    return manifest if manifest["delivery_state"] == "acknowledged" else None


def test_grant_enables_and_revoke_disables(hub: HubProcess, catalog: Catalog, tmp_path: Path):
    device_id, agent = _device_with_agent(hub, catalog, tmp_path, f"GR-{secrets.token_hex(2)}")
    try:
        assert "premium" not in agent.features()["features"]
        ent = _entitlement(catalog, "perpetual", 3)
        _ok(catalog.api.post(f"/entitlements/{ent}/activations", json={"device_id": device_id}))
        wait_until(
            lambda: agent.features()["features"].get("premium", {}).get("enabled"),
            30,
            what="premium on",
        )
        held = agent.features()
        assert held["features"]["max_users"]["limit"] == 25
        seq = held["manifest_seq"]
        wait_until(
            lambda: (m := _acknowledged(catalog, device_id)) and m["seq"] == seq, 30, what="ack"
        )

        _ok(catalog.api.post(f"/entitlements/{ent}/revoke", json={"reason": "chargeback"}))
        wait_until(
            lambda: not agent.features()["features"].get("premium", {}).get("enabled"),
            30,
            what="premium off after one delivery",
        )
        assert agent.features()["manifest_seq"] == seq + 1
        history = catalog.api.get(f"/accounts/{catalog.account_id}/history").json()["items"]
        revokes = [h for h in history if h["action"] == "entitlement.revoke"]
        assert any(h["reason"] == "chargeback" and h["actor"].startswith("key:") for h in revokes)
        device_history = catalog.api.get(f"/devices/{device_id}/history").json()["items"]
        assert any(h["action"] == "activation.create" for h in device_history)
    finally:
        agent.stop()


def test_offline_device_disables_when_its_lease_runs_out(
    hub: HubProcess, catalog: Catalog, tmp_path: Path
):
    device_id, agent = _device_with_agent(hub, catalog, tmp_path, f"OF-{secrets.token_hex(2)}")
    ent = _entitlement(catalog, "perpetual", 1)
    _ok(catalog.api.post(f"/entitlements/{ent}/activations", json={"device_id": device_id}))
    wait_until(lambda: _acknowledged(catalog, device_id), 30, what="manifest acknowledged")
    assert agent.stop() == 0  # offline from now on; it never reconnects
    held = agent.features()
    assert held["features"]["premium"]["enabled"]
    _ok(catalog.api.post(f"/entitlements/{ent}/revoke", json={"reason": "non-payment"}))
    time.sleep(1)
    # The revoke never reached it, yet once the lease has run out it falls back to safe defaults.
    assert agent.features(now=held["not_after"] - 1)["features"]["premium"]["enabled"]
    assert agent.features(now=held["not_after"])["features"] == {}
    # A clock turned back afterwards does not bring it back (lapse is remembered once observed).
    assert agent.features(now=held["not_after"] - 30 * 86_400)["features"] == {}


def test_floating_seats_never_exceed_the_count(hub: HubProcess, catalog: Catalog, tmp_path: Path):
    ent = _entitlement(catalog, "floating", 2)
    agents: list[AgentProcess] = []
    holders_seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seats = catalog.api.get(f"/entitlements/{ent}/seats").json()
            holders_seen.append(len(seats))
            time.sleep(0.1)

    try:
        ids = []
        for i in range(3):
            device_id, agent = _device_with_agent(
                hub,
                catalog,
                tmp_path,
                f"FL-{secrets.token_hex(2)}-{i}",
                seat_products=(catalog.product_id,),
            )
            _ok(catalog.api.post(f"/entitlements/{ent}/activations", json={"device_id": device_id}))
            ids.append(device_id)
            agents.append(agent)
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()

        def enabled() -> list[AgentProcess]:
            return [a for a in agents if _premium(a)]

        holders = wait_until(
            lambda: (h := enabled()) and len(h) == 2 and h, 60, what="two seat holders"
        )
        # An ungraceful death (last will) frees its seat; the waiting device takes it.
        victim = holders[0]
        victim.kill()
        waiting = next(a for a in agents if a not in holders)
        wait_until(
            lambda: waiting.features()["features"].get("premium", {}).get("enabled"),
            60,
            what="the freed seat taken by the waiting device",
        )
    finally:
        stop.set()
        for agent in agents:
            agent.stop()
    assert holders_seen and max(holders_seen) <= 2


def test_manifest_key_rotation(tmp_path: Path):
    hub = HubProcess(tmp_path / "hub", extra_env={"HUB_MAINTENANCE_INTERVAL_SECONDS": "1"})
    hub.start()
    agent: AgentProcess | None = None
    try:
        with hub.api(hub.create_tenant("rot")) as api:
            cls = _ok(
                api.post(
                    "/device-classes",
                    json={
                        "name": "c",
                        "vendor_id": "fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe",
                        "class_id": "1492af14-2569-5e48-bf42-9b2d51f2ab45",
                    },
                )
            )
            product = _ok(api.post("/products", json={"sku": "R", "name": "R"}))
            _ok(
                api.post(
                    f"/products/{product['id']}/features", json={"key": "premium", "kind": "flag"}
                )
            )
            account = _ok(api.post("/accounts", json={"name": "A"}))
            cat = Catalog(api, cls["id"], product["id"], account["id"])
            device_id, agent = _device_with_agent(hub, cat, tmp_path, "ROT-1")
            ent = _entitlement(cat, "perpetual", 1)
            _ok(api.post(f"/entitlements/{ent}/activations", json={"device_id": device_id}))
            old = wait_until(lambda: _acknowledged(cat, device_id), 30, what="first manifest acked")
            old_signed = agent.directory / "old-manifest.cose"
            old_signed.write_bytes(_held_manifest(agent))

            assert hub.stop() == 0
            rotated = subprocess.run(
                [sys.executable, "-m", "hub.cli.main", "keys", "rotate-manifest"],
                env=hub.env(),
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert rotated.returncode == 0, rotated.stderr
            hub.start()

            new = wait_until(
                lambda: (m := _acknowledged(cat, device_id)) and m["kid"] != old["kid"] and m,
                60,
                what="manifest under the new key acknowledged",
            )
            assert new["seq"] > old["seq"]
            assert _premium(agent)
            # The retired key is no longer trusted, even for the manifest the device held.
            inspect = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "device_agent.cli",
                    "inspect-manifest",
                    str(old_signed),
                    "--anchors",
                    str(agent.directory / "state"),
                ],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert inspect.returncode == 1, inspect.stdout
    finally:
        if agent is not None:
            agent.stop()
        assert hub.stop() == 0, hub.log_tail()


def _held_manifest(agent: AgentProcess) -> bytes:
    from protocols import cbor

    state = cbor.decode((agent.directory / "state" / "trust.cbor").read_bytes())
    return state["manifest"]
