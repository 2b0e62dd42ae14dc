"""``hub serve --mqtt-url``: the operator runs Mosquitto from ``hub mosquitto-config``.

The hub keeps the broker's password file in sync (HUB_MOSQUITTO_PASSWORD_FILE)
and signals it (HUB_MOSQUITTO_PID_FILE), so a device claimed through the
external claim broker can log in to the external device broker.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulator.processes import AgentProcess, HubProcess, free_port, wait_until
from tests.backends import mosquitto_binary
from tests.support.net import wait_for_port

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(mosquitto_binary() is None, reason="no mosquitto binary"),
]


def _value(conf: str, key: str) -> str:
    return next(line.split(" ", 1)[1] for line in conf.splitlines() if line.startswith(key + " "))


@pytest.fixture
def external_brokers(tmp_path: Path) -> Iterator[dict[str, object]]:
    data_dir = tmp_path / "hub"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    env["HUB_DATA_DIR"] = str(data_dir)
    hub_cmd = [sys.executable, "-m", "hub.cli.main"]
    port, claim_port, claim_hub_port = free_port(), free_port(), free_port()
    out = tmp_path / "mosquitto"
    for args in (
        ["db", "upgrade"],
        [
            "mosquitto-config",
            "--out",
            str(out),
            "--port",
            str(port),
            "--claim-port",
            str(claim_port),
            "--claim-hub-port",
            str(claim_hub_port),
        ],
    ):
        done = subprocess.run(
            [*hub_cmd, *args], env=env, capture_output=True, text=True, timeout=90, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
    pid_file = out / "mosquitto.pid"
    processes = []
    for name, extra in (("mosquitto.conf", f"pid_file {pid_file}\n"), ("claim-mosquitto.conf", "")):
        conf = out / name
        # Running as root here: keep mosquitto from switching to a user that cannot
        # read the hub's 0600/0640 files (an operator would use a shared group).
        conf.write_text(conf.read_text() + extra + ("user root\n" if os.geteuid() == 0 else ""))
        log = (out / f"{name}.log").open("wb")
        processes.append(
            subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=log, stderr=log)
        )
    try:
        for p in (port, claim_port, claim_hub_port):
            wait_for_port(p)
        yield {
            "data_dir": data_dir,
            "port": port,
            "claim_port": claim_port,
            "claim_hub_port": claim_hub_port,
            "password_file": Path(_value((out / "mosquitto.conf").read_text(), "password_file")),
            "pid_file": pid_file,
        }
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)


def test_device_claimed_via_external_brokers_logs_in(external_brokers, tmp_path: Path):
    b = external_brokers
    hub = HubProcess(
        data_dir=b["data_dir"],
        broker="external",
        extra_env={
            "HUB_MQTT_URL": f"mqtt://127.0.0.1:{b['port']}",
            "HUB_CLAIM_MQTT_URL": f"mqtt://127.0.0.1:{b['claim_hub_port']}",
            "HUB_MOSQUITTO_PASSWORD_FILE": str(b["password_file"]),
            "HUB_MOSQUITTO_PID_FILE": str(b["pid_file"]),
        },
    )
    hub.start()
    agent = None
    try:
        assert "external broker at mqtt://127.0.0.1:" in hub.log_tail(200)
        with hub.api(hub.create_tenant(f"ext-{secrets.token_hex(3)}")) as api:
            cls = api.post(
                "/device-classes",
                json={
                    "name": "c",
                    "vendor_id": "fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe",
                    "class_id": "1492af14-2569-5e48-bf42-9b2d51f2ab45",
                },
            ).json()
            device = api.post(
                "/devices", json={"serial": "EXT-1", "device_class_id": cls["id"]}
            ).json()
            token = api.post(
                "/claim-batches", json={"name": "b", "serials": ["EXT-1"], "ttl_seconds": 600}
            ).json()["token"]
            agent = AgentProcess(
                directory=tmp_path / "agent",
                serial="EXT-1",
                host="127.0.0.1",
                port=b["port"],
                claim_port=b["claim_port"],
                token=token,
                heartbeat_seconds=2.0,
            )
            agent.start()
            wait_until(
                lambda: (
                    (d := api.get(f"/devices/{device['id']}").json())["status"] == "claimed"
                    and d["online"]
                ),
                60,
                what="claimed via the external claim broker, online on the device broker",
            )
        assert device["id"] in b["password_file"].read_text()
    finally:
        if agent is not None:
            agent.stop()
        assert hub.stop() == 0, hub.log_tail()
