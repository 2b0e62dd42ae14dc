"""``make demo``: a hub on the embedded default and a handful of real agents.

It starts ``hub serve`` (embedded amqtt broker, SQLite, free ports, a temporary
data directory), bootstraps a tenant, registers a device class and devices
through the REST API (half with a batch claim token, half with pre-registered
keys), starts one ``device-agent`` process per device, waits until every device
has claimed its identity over MQTT and reports online, then shows one agent
dying ungracefully (its last will marks it offline) and prints a report.
"""

from __future__ import annotations

import base64
import sys
import tempfile
import time
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console
from rich.table import Table

from simulator.processes import AgentProcess, HubProcess, wait_until

DEVICES = 6
console = Console()


def _write_device_key(path: Path) -> str:
    key = Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def _register(api: httpx.Client, root: Path, hub: HubProcess) -> list[AgentProcess]:
    cls = (
        api.post(
            "/device-classes",
            json={
                "name": "thermostat-v2",
                "vendor_id": "fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe",
                "class_id": "1492af14-2569-5e48-bf42-9b2d51f2ab45",
            },
        )
        .raise_for_status()
        .json()
    )
    agents: list[AgentProcess] = []
    token_serials = [f"SN-{i:04d}" for i in range(DEVICES // 2)]
    for serial in token_serials:
        api.post(
            "/devices", json={"serial": serial, "device_class_id": cls["id"], "tags": ["demo"]}
        ).raise_for_status()
    batch = (
        api.post(
            "/claim-batches",
            json={"name": "demo batch", "serials": token_serials, "ttl_seconds": 3600},
        )
        .raise_for_status()
        .json()
    )
    for serial in token_serials:
        agents.append(_agent(root, hub, serial, token=batch["token"]))
    for i in range(DEVICES // 2, DEVICES):
        serial = f"SN-{i:04d}"
        key_file = root / "keys" / f"{serial}.pem"
        public = _write_device_key(key_file)
        api.post(
            "/devices",
            json={
                "serial": serial,
                "device_class_id": cls["id"],
                "tags": ["demo", "keyed"],
                "public_key": public,
            },
        ).raise_for_status()
        agents.append(_agent(root, hub, serial, key_file=key_file))
    return agents


def _agent(root: Path, hub: HubProcess, serial: str, **claim: object) -> AgentProcess:
    return AgentProcess(
        directory=root / "agents" / serial,
        serial=serial,
        host="127.0.0.1",
        port=hub.mqtt_port,
        claim_port=hub.claim_port,
        **claim,  # type: ignore[arg-type]
    )


def _entitle(api: httpx.Client) -> str:
    """Sell the account a product with a premium flag and a user limit; returns its id."""
    product = (
        api.post("/products", json={"sku": "THERMO-PRO", "name": "Thermostat Pro"})
        .raise_for_status()
        .json()
    )
    for feature in (
        {"key": "premium", "kind": "flag"},
        {"key": "max_users", "kind": "limit", "default_limit": 5},
    ):
        api.post(f"/products/{product['id']}/features", json=feature).raise_for_status()
    account = api.post("/accounts", json={"name": "Contoso Facilities"}).raise_for_status().json()
    entitlement = (
        api.post(
            "/entitlements",
            json={
                "account_id": account["id"],
                "product_id": product["id"],
                "license_model": "perpetual",
                "quantity": DEVICES,
            },
        )
        .raise_for_status()
        .json()
    )
    for device in _devices(api):
        api.post(
            f"/entitlements/{entitlement['id']}/activations", json={"device_id": device["id"]}
        ).raise_for_status()
    return str(entitlement["id"])


def _devices(api: httpx.Client) -> list[dict[str, object]]:
    items: list[dict[str, object]] = (
        api.get("/devices", params={"limit": 500}).raise_for_status().json()["items"]
    )
    return items


def _premium(agent: AgentProcess) -> bool:
    return bool(agent.features()["features"].get("premium", {}).get("enabled"))


def _all_acknowledged(api: httpx.Client) -> bool:
    return all(
        api.get(f"/devices/{d['id']}/manifest").json()["delivery_state"] == "acknowledged"
        for d in _devices(api)
    )


def _report(api: httpx.Client, started: float) -> None:
    table = Table(title="devices")
    for column in ("serial", "device id", "online", "manifest", "delivery", "features"):
        table.add_column(column)
    for device in sorted(_devices(api), key=lambda d: str(d["serial"])):
        manifest = api.get(f"/devices/{device['id']}/manifest").json()
        table.add_row(
            str(device["serial"]),
            str(device["id"]),
            "yes" if device["online"] else "no",
            f"seq {manifest['seq']}",
            manifest["delivery_state"],
            ", ".join(sorted(manifest["features"])),
        )
    console.print(table)
    audit = api.get("/audit", params={"limit": 500}).raise_for_status().json()
    actions: dict[str, int] = {}
    for event in audit["items"]:
        actions[event["action"]] = actions.get(event["action"], 0) + 1
    console.print("audit log:", ", ".join(f"{k} x{v}" for k, v in sorted(actions.items())))
    console.print(f"done in {time.monotonic() - started:.1f}s")


def main() -> int:
    """Run the demo; returns the process exit status."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hub-demo-") as tmp:
        root = Path(tmp)
        hub = HubProcess(data_dir=root / "hub")
        console.print(f"starting hub: embedded broker on :{hub.mqtt_port}, REST on :{hub.api_port}")
        hub.start()
        agents: list[AgentProcess] = []
        try:
            key = hub.create_tenant("Acme Devices")
            with hub.api(key) as api:
                agents = _register(api, root, hub)
                console.print(
                    f"registered {len(agents)} devices; starting {len(agents)} agent processes"
                )
                for agent in agents:
                    agent.start()
                wait_until(
                    lambda: all(d["status"] == "claimed" and d["online"] for d in _devices(api)),
                    timeout=60,
                    what="every device claimed and online",
                )
                console.print(
                    "[green]all devices claimed their identity over MQTT and are online[/]"
                )
                _entitle(api)
                wait_until(lambda: all(_premium(a) for a in agents), timeout=60, what="enforcement")
                console.print(
                    "[green]entitled: every agent verified its signed manifest"
                    " and enabled 'premium'[/]"
                )
                wait_until(lambda: _all_acknowledged(api), timeout=30, what="every manifest acked")
                agents[0].kill()
                wait_until(
                    lambda: (
                        not next(d for d in _devices(api) if d["serial"] == agents[0].serial)[
                            "online"
                        ]
                    ),
                    timeout=30,
                    what="the killed agent's last will",
                )
                console.print(
                    f"killed {agents[0].serial} with SIGKILL: its last will marked it offline"
                )
                _report(api, started)
        except Exception as exc:
            console.print(f"[red]demo failed: {exc}[/]\n{hub.log_tail()}")
            return 1
        finally:
            for agent in agents:
                agent.stop()
            status = hub.stop()
            console.print(f"hub stopped (exit status {status})")
    return 0 if status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
