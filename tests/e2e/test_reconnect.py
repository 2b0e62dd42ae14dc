"""A hub restart under connected agents: they come back on their own, nothing is lost."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulator.processes import AgentProcess, HubProcess, wait_until
from tests.backends import postgres_url
from tests.e2e.conftest import Backend, _backends
from tests.support.pg import fresh_schema

pytestmark = pytest.mark.e2e


@pytest.fixture(params=_backends(), ids=str)
def stopped_hub(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HubProcess]:
    backend: Backend = request.param
    if backend.database == "postgresql":
        base = postgres_url()
        assert base is not None
        with fresh_schema(base) as url:
            yield HubProcess(data_dir=tmp_path / "hub", broker=backend.broker, database_url=url)
    else:
        yield HubProcess(data_dir=tmp_path / "hub", broker=backend.broker)


def test_agents_reconnect_after_hub_restart(stopped_hub: HubProcess, tmp_path: Path):
    hub = stopped_hub
    hub.start()
    agents: list[AgentProcess] = []
    try:
        with hub.api(hub.create_tenant(f"t-{secrets.token_hex(3)}")) as api:
            cls = api.post(
                "/device-classes",
                json={
                    "name": "c",
                    "vendor_id": "fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe",
                    "class_id": "1492af14-2569-5e48-bf42-9b2d51f2ab45",
                },
            ).json()
            serials = ["RC-1", "RC-2"]
            for serial in serials:
                api.post("/devices", json={"serial": serial, "device_class_id": cls["id"]})
            token = api.post(
                "/claim-batches", json={"name": "b", "serials": serials, "ttl_seconds": 600}
            ).json()["token"]
            agents = [
                AgentProcess(
                    directory=tmp_path / s,
                    serial=s,
                    host="127.0.0.1",
                    port=hub.mqtt_port,
                    claim_port=hub.claim_port,
                    token=token,
                    heartbeat_seconds=2.0,
                )
                for s in serials
            ]
            for agent in agents:
                agent.start()

            def devices() -> list[dict]:
                return api.get("/devices").json()["items"]

            # A heartbeat can mark a device online before its hello lands;
            # last_connect_at is only set by the hello, so wait for both.
            before = wait_until(
                lambda: (
                    (d := devices()) and all(x["online"] and x["last_connect_at"] for x in d) and d
                ),
                60,
                what="online and said hello",
            )
            assert hub.stop() == 0
            hub.start()
            connected_before = {d["id"]: d["last_connect_at"] for d in before}

            def reconnected() -> bool:
                now = devices()
                return all(
                    d["online"]
                    and d["last_connect_at"] is not None
                    and d["last_connect_at"] > connected_before[d["id"]]
                    for d in now
                )

            wait_until(reconnected, 60, what="agents reconnected and said hello")
            # Same identities: nobody claimed twice.
            claims = api.get("/audit", params={"action": "claim.accepted"}).json()["items"]
            assert len(claims) == len(serials)
    finally:
        for agent in agents:
            agent.stop()
        assert hub.stop() == 0, hub.log_tail()
