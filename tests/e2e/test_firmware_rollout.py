"""A firmware rollout end to end: a real hub, 110 real agents, a real broker.

100 entitled devices and 10 unentitled ones of the same class claim their
identities over MQTT and run the real session with the real firmware
component (tests/e2e/firmware_fleet.py). A package that requires the product
is uploaded over REST and rolled out in two waves (20 then 80 devices) with
``failure_percent`` 10, a minimum sample of 10, ``failure_action`` abort and
``success_percent`` 100, so only the failure threshold can end the rollout
before the second wave.

20 of the 100 devices are configured to fail their health check: 4 of the
first wave and 16 of the second. The test checks that the rollout aborts at the
threshold, that no device of the second wave (nor any unentitled device) is
ever offered the package or sent a byte of it, that every failing device of
the first wave reverted to its old image, and that every confirmed device runs
exactly the released image, as the hub also records. Three healthy devices of
the first wave download over the hub's ranged HTTP endpoint instead of MQTT.
One healthy first-wave device connects only after the abort: its job was
withdrawn, so it is never offered the package.
"""

from __future__ import annotations

import hashlib
import io
import random
import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from device_agent.firmware.install import Step
from device_agent.outgoing import Outgoing
from protocols import topics
from protocols.firmware_messages import FirmwareChunkRequest
from protocols.messages import encode_message
from simulator.processes import HubProcess, wait_until
from tests.backends import postgres_url
from tests.e2e.conftest import Backend, _backends
from tests.e2e.firmware_fleet import FirmwareFleet, FleetDevice
from tests.support.pg import fresh_schema

pytestmark = pytest.mark.e2e

ENTITLED, UNENTITLED = 100, 10
WAVE1, FAIL1, FAIL2 = 20, 4, 16
HTTP_DEVICES = 3
CHUNK = 1024
IMAGE = random.Random(7).randbytes(8 * CHUNK + 100)  # 9 chunks, the last short


@pytest.fixture(scope="module", params=_backends(), ids=str)
def hub(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HubProcess]:
    backend: Backend = request.param
    data_dir = tmp_path_factory.mktemp(f"fw-{backend}")
    if backend.database == "postgresql":
        base = postgres_url()
        assert base is not None
        with fresh_schema(base) as url:
            yield from _run(HubProcess(data_dir, backend.broker, url))
    else:
        yield from _run(HubProcess(data_dir, backend.broker))


def _run(hub: HubProcess) -> Iterator[HubProcess]:
    hub.start()
    try:
        yield hub
    finally:
        assert hub.stop() == 0, hub.log_tail()


def ok(response: httpx.Response) -> dict:
    assert response.status_code in (200, 201), response.text
    return response.json()


def pages(api: httpx.Client, path: str) -> list[dict]:
    items: list[dict] = []
    while True:
        page = ok(api.get(path, params={"limit": 200, "offset": len(items)}))
        items += page["items"]
        if len(items) >= page["total"] or not page["items"]:
            return items


def import_devices(api: httpx.Client, class_id: str, serials: list[str]) -> dict[str, str]:
    csv = "serial,device_class_id,tags,public_key\n" + "".join(
        f"{serial},{class_id},fw,\n" for serial in serials
    )
    result = ok(api.post("/devices/import", content=csv, headers={"Content-Type": "text/csv"}))
    assert all(row["status"] == "created" for row in result["rows"]), result
    return {row["serial"]: row["device_id"] for row in result["rows"]}


def test_rollout_aborts_at_the_failure_threshold(hub: HubProcess, tmp_path: Path) -> None:
    vendor, klass = str(uuid.uuid4()), str(uuid.uuid4())
    run = secrets.token_hex(3)
    with hub.api(hub.create_tenant(f"fw-{run}")) as api:
        cls = ok(
            api.post(
                "/device-classes",
                json={"name": f"fw-{run}", "vendor_id": vendor, "class_id": klass},
            )
        )
        product = ok(api.post("/products", json={"sku": f"FW-{run}".upper(), "name": "Updates"}))
        account = ok(api.post("/accounts", json={"name": f"Customer {run}"}))
        entitlement = ok(
            api.post(
                "/entitlements",
                json={
                    "account_id": account["id"],
                    "product_id": product["id"],
                    "license_model": "perpetual",
                    "quantity": ENTITLED,
                },
            )
        )
        serials = [f"FW{run}-{i:03d}" for i in range(ENTITLED + UNENTITLED)]
        ids = import_devices(api, cls["id"], serials)
        entitled = serials[:ENTITLED]
        for serial in entitled:
            ok(
                api.post(
                    f"/entitlements/{entitlement['id']}/activations",
                    json={"device_id": ids[serial]},
                )
            )
        token = ok(
            api.post("/claim-batches", json={"name": run, "serials": serials, "ttl_seconds": 3600})
        )["token"]

        fleet = FirmwareFleet(
            host="127.0.0.1",
            port=hub.mqtt_port,
            claim_port=hub.claim_port,
            vendor_id=vendor,
            class_id=klass,
            root=tmp_path / "fleet",
            firmware={"chunk_timeout_seconds": 3, "max_stalls": 20},
        )
        try:
            for serial in serials:
                fleet.add(serial)
            fleet.claim_all(token)
            by_id = {device.device_id: device for device in fleet.devices.values()}
            assert set(by_id) == set(ids.values())

            package = ok(
                api.post(
                    "/firmware/packages",
                    data={
                        "device_class_id": cls["id"],
                        "version": "2.0.0",
                        "required_product_id": product["id"],
                        "chunk_size": str(CHUNK),
                    },
                    files={"file": ("fw.bin", io.BytesIO(IMAGE), "application/octet-stream")},
                )
            )
            assert package["sha256"] == hashlib.sha256(IMAGE).hexdigest()
            rollout = ok(
                api.post(
                    "/firmware/rollouts",
                    json={
                        "name": f"r-{run}",
                        "package_id": package["id"],
                        "waves": [{"size": WAVE1}, {"percent": 100}],
                        "success_percent": 100,
                        "failure_percent": 10,
                        "failure_min_sample": 10,
                        "failure_action": "abort",
                    },
                )
            )
            rollout = ok(api.post(f"/firmware/rollouts/{rollout['id']}/start"))
            assert rollout["target_count"] == ENTITLED
            assert rollout["skipped"].get("not_entitled") == UNENTITLED
            jobs = pages(api, f"/firmware/rollouts/{rollout['id']}/devices")
            wave_of = {job["device_id"]: job["wave"] for job in jobs}
            job_of = {job["device_id"]: job["job_id"] for job in jobs}
            first = sorted(d for d, w in wave_of.items() if w == 0)
            second = sorted(d for d, w in wave_of.items() if w == 1)
            assert len(first) == WAVE1 and len(second) == ENTITLED - WAVE1
            # 20% of the fleet fails its health check: 4 of wave 1, 16 of wave 2
            failing = set(first[:FAIL1]) | set(second[:FAIL2])
            for device_id in failing:
                by_id[device_id].healthy = False
            # a few healthy first-wave devices download over HTTP ranges instead of MQTT
            http = [d for d in first if d not in failing][:HTTP_DEVICES]
            for device_id in http:
                by_id[device_id].firmware = {"transport": "http", "http_url": hub.api_url}

            # one healthy first-wave device comes online only after the abort
            late = [d for d in first if d not in failing and d not in http][-1]
            fleet.connect_all(except_serials=frozenset({by_id[late].serial}))
            # every device asks the hub on connect (fw_query)
            state = wait_until(
                lambda: (
                    (r := ok(api.get(f"/firmware/rollouts/{rollout['id']}")))["state"] != "running"
                    and r
                ),
                90,
                what="the rollout to stop",
            )
            assert state["state"] == "aborted", state
            assert "failure threshold" in (state["state_reason"] or "")
            wave1 = [by_id[d] for d in first if d != late]
            wait_until(
                lambda: fleet.inspect(lambda: all(d.settled() for d in wave1)),
                60,
                what="wave 1 to settle",
            )
            aborted_at = time.time()
            assert ok(api.get(f"/devices/{late}/firmware"))["updated_at"] is None  # never asked
            fleet.connect(by_id[late])
            wait_until(  # the hub has handled its fw_query (it records what the device runs)
                lambda: ok(api.get(f"/devices/{late}/firmware"))["updated_at"] is not None,
                20,
                what="the late device's query",
            )

            # an unentitled device asking for another device's chunks gets none
            stranger = fleet.devices[serials[-1]]
            probe_job = job_of[first[-1]]
            request = FirmwareChunkRequest(job_id=probe_job, index=0, count=4)
            topic = topics.device_up(stranger.device_id, topics.UpKind.FIRMWARE)
            fleet.publish(stranger, Outgoing(topic, encode_message(request)))
            wait_until(lambda: fleet.inspect(lambda: stranger.seen.errors), 20, what="error reply")
            time.sleep(12)  # two more engine passes: nothing more may be offered

            snapshot = fleet.inspect(
                lambda: {d.device_id: _outcome(d) for d in fleet.devices.values()}
            )
        finally:
            fleet.stop()

        jobs_after = {
            job["device_id"]: job
            for job in pages(api, f"/firmware/rollouts/{rollout['id']}/devices")
        }
        offered = {device_id for device_id, out in snapshot.items() if out["offers"]}
        assert offered <= set(first), "only the first wave may ever be offered the package"
        # The start offers every first-wave job at once, before any device is online;
        # a device gets its offer again when it connects and asks (fw_query). One
        # that connects only after the abort (a loaded machine) finds its job
        # withdrawn by the abort: it is never offered and must stay untouched.
        for device_id in set(first) - offered:
            out, job = snapshot[device_id], jobs_after[device_id]
            assert out["step"] is Step.IDLE and out["chunks"] == 0, device_id
            assert out["image"] == out["factory"]
            assert (job["state"], job["reason"]) == ("cancelled", "rollout_aborted"), job
        assert late not in offered and len(offered) >= 10  # the threshold's sample is 10
        for device_id in second + [by_id[ids[s]].device_id for s in serials[ENTITLED:]]:
            out = snapshot[device_id]
            assert out["offers"] == [] and out["chunks"] == 0, device_id
            assert out["step"] is Step.IDLE and out["image"] == out["factory"]
        for device_id in second:
            assert jobs_after[device_id]["state"] == "cancelled"
        assert all(t <= aborted_at for out in snapshot.values() for t in out["offer_times"])
        assert snapshot[stranger.device_id]["errors"] == ["unknown_job"]

        reverted = confirmed = 0
        for device_id in offered:
            out, job = snapshot[device_id], jobs_after[device_id]
            if out["step"] is Step.CONFIRMED:
                assert device_id not in failing
                assert out["image"] == IMAGE and out["installed_seq"] == package["sequence"]
                assert job["state"] == "confirmed"
                confirmed += 1
            elif out["step"] is Step.REVERTED:
                assert device_id in failing and out["reason"] == "health check failed"
                assert out["image"] == out["factory"] and out["active"] == "a"
                assert job["state"] == "reverted"
                reverted += 1
            else:  # withdrawn by the abort before it switched
                assert out["step"] is Step.FAILED and out["reason"].startswith("cancelled")
                assert out["image"] == out["factory"] and job["state"] in ("cancelled", "failed")
        assert reverted >= 1 and confirmed >= 1
        for device_id in http:  # verified chunk by chunk from HTTP ranges, none over MQTT
            if snapshot[device_id]["step"] is Step.CONFIRMED:
                assert snapshot[device_id]["chunks"] == 0
        assert any(snapshot[d]["step"] is Step.CONFIRMED for d in http)
        assert reverted + confirmed >= 10  # the threshold needs a sample of 10

        for device_id in first:
            view = ok(api.get(f"/devices/{device_id}/firmware"))
            expected = package["sequence"] if snapshot[device_id]["step"] is Step.CONFIRMED else 0
            assert view["installed_seq"] == expected, (device_id, view)

        # the HTTP download is closed to another device's job too
        creds = (stranger.identity.mqtt_username, stranger.identity.mqtt_password)  # type: ignore[union-attr]
        response = httpx.get(
            f"{hub.api_url}/api/v1/device/firmware/{probe_job}/payload",
            auth=creds,
            headers={"Range": "bytes=0-1023"},
        )
        assert response.status_code == 404


def _outcome(device: FleetDevice) -> dict:
    component = device.component
    assert component is not None
    return {
        "offers": [job for _, job in device.seen.offers],
        "offer_times": [at for at, _ in device.seen.offers],
        "chunks": sum(device.seen.chunks.values()),
        "errors": [error.code for error in device.seen.errors],
        "step": component.step,
        "reason": component.installer.state.reason,
        "image": component.running_image(),
        "active": component.active_slot,
        "installed_seq": component.installed_seq,
        "factory": f"factory image of {device.serial}\n".encode(),
    }
