"""Ranged HTTP download: Basic auth as the device, every refusal, verified bytes."""

from __future__ import annotations

import os
from typing import Any

import pytest

from hub.firmware.errors import RangeNotSatisfiable
from hub.firmware.router_device import parse_range
from protocols import suit
from protocols.firmware_messages import FirmwareOffer, FirmwareReport
from tests.hub.firmware.world import World, of_type

PAYLOAD = os.urandom(5000)


def _setup(world: World) -> tuple[dict[str, tuple[str, str]], dict[str, FirmwareOffer], str]:
    package = world.package("1.0.0", PAYLOAD)
    creds = {name: world.device() for name in ("a", "b")}
    started = world.start(package["id"])
    offers = {d: m for d, m in world.tick() if isinstance(m, FirmwareOffer)}
    by_name = {name: offers[device] for name, (device, _) in creds.items()}
    return creds, by_name, started["id"]


def _get(world: World, path: str, auth: Any, range_: str | None = None) -> Any:
    headers = {"Range": range_} if range_ else {}
    return world.client.get(path, auth=auth, headers=headers)


def test_ranges_aligned_to_chunks_verify_against_the_envelope(world: World) -> None:
    creds, offers, _ = _setup(world)
    offer = offers["a"]
    manifest = world.manifest(offer.envelope)
    assert offer.http_path is not None
    response = _get(world, offer.http_path, creds["a"], "bytes=1024-3071")
    assert response.status_code == 206
    assert response.headers["content-range"] == "bytes 1024-3071/5000"
    assert response.headers["content-length"] == "2048"
    suit.verify_chunk(manifest, 1, response.content[:1024])
    suit.verify_chunk(manifest, 2, response.content[1024:])
    tail = _get(world, offer.http_path, creds["a"], "bytes=4096-")
    assert tail.status_code == 206 and tail.headers["content-range"] == "bytes 4096-4999/5000"
    suit.verify_chunk(manifest, 4, tail.content)
    whole = _get(world, offer.http_path, creds["a"])
    assert whole.status_code == 200 and whole.headers["accept-ranges"] == "bytes"
    suit.verify_image(manifest, whole.content)
    clipped = _get(world, offer.http_path, creds["a"], "bytes=4096-999999")
    assert clipped.headers["content-range"] == "bytes 4096-4999/5000"  # never past the end


def test_refusals(world: World) -> None:
    creds, offers, rollout_id = _setup(world)
    path_a, path_b = offers["a"].http_path, offers["b"].http_path
    assert path_a and path_b
    device_a, password_a = creds["a"]
    # 401: none, wrong password, unknown user, the hub's own username.
    for auth in (
        None,
        (device_a, "wrong"),
        ("dev-00000000000000000000", password_a),
        ("hub-main", password_a),
    ):
        response = _get(world, path_a, auth)
        assert response.status_code == 401, auth
        assert response.headers["www-authenticate"].startswith("Basic")
    # 404: another device's job looks like a missing one.
    for path in (
        path_b,
        "/api/v1/device/firmware/job-000000000000000000000000/payload",
        "/api/v1/device/firmware/../payload",
    ):
        response = _get(world, path, creds["a"])
        assert response.status_code == 404, path
    assert _get(world, path_b, creds["a"]).json()["error"] == "unknown_job"
    # 416: outside the payload, malformed, several ranges.
    for bad in (
        "bytes=5000-5001",
        "bytes=10-5",
        "items=0-1",
        "bytes=0-1,4-5",
        "bytes=-0",
        "bytes=-",
    ):
        response = _get(world, path_a, creds["a"], bad)
        assert response.status_code == 416, bad
        assert response.headers["content-range"] == "bytes */5000"
    # 409: once the job is over.
    world.send((device_a, FirmwareReport(job_id=offers["a"].job_id, step="failed", key="f", at=1)))
    response = _get(world, path_a, creds["a"], "bytes=0-1023")
    assert (response.status_code, response.json()["error"]) == (409, "job_not_active")
    # 403: the gate is checked at request time.
    world.revoke_all()
    response = _get(world, path_b, creds["b"], "bytes=0-1023")
    assert (response.status_code, response.json()["error"]) == (403, "not_entitled")
    assert world.show(rollout_id)["counts"]["failed"] == 1


def test_a_disabled_device_cannot_download(world: World) -> None:
    creds, offers, _ = _setup(world)
    device, _ = creds["a"]
    world.fleet().set_status(device, "disabled")
    assert offers["a"].http_path
    assert _get(world, offers["a"].http_path, creds["a"]).status_code == 401


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-0", (0, 0)),
        ("bytes=0-99", (0, 99)),
        ("bytes=90-", (90, 99)),
        ("bytes=-10", (90, 99)),
        ("bytes=-500", (0, 99)),
        ("bytes=50-500", (50, 99)),
    ],
)
def test_parse_range(header: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize(
    "header",
    ["bytes=100-", "bytes=100-200", "bytes=5-4", "bytes=-0", "bytes=a-b", "bytes=1-2,3-4", ""],
)
def test_parse_range_refusals(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 100)


def test_offers_only_reach_entitled_devices_over_http_too(world: World) -> None:
    package = world.package("1.0.0", PAYLOAD)
    world.device()
    outsider = world.device(entitled=False)
    world.start(package["id"])
    offers = of_type(world.tick(), FirmwareOffer)
    assert len(offers) == 1 and offers[0].http_path
    assert _get(world, offers[0].http_path, outsider).status_code == 404


def test_absurdly_long_range_numbers_are_unsatisfiable_not_a_crash() -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=" + "9" * 5000 + "-", 100)
