"""``hub firmware``: upload, envelope, inspect (offline, with the public SUIT vectors), rollouts."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from hub.cli import common as cli_common
from hub.cli.firmware import firmware_app, parse_wave, parse_window
from tests.hub.firmware.world import World

runner = CliRunner()
VECTORS = Path(__file__).resolve().parents[4] / "shared" / "vectors"
SUIT_DIR = VECTORS / "suit"
needs_vectors = pytest.mark.skipif(
    not (SUIT_DIR / "example1.txt").is_file(), reason=f"SUIT examples not found at {SUIT_DIR}"
)


@pytest.fixture(autouse=True)
def route_to_app(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    def make_client(api_url: str, api_key: str | None) -> httpx.Client:
        return TestClient(world.app, headers={"Authorization": f"Bearer {api_key}"})

    monkeypatch.setattr(cli_common, "make_client", make_client)


def run(world: World, *args: str) -> Any:
    return runner.invoke(firmware_app, [*args, "--api-key", world.tenant.operator])


def run_json(world: World, *args: str) -> Any:
    result = run(world, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _text(path: Path) -> str:
    return path.read_bytes().decode("utf-8-sig").replace("\r\n", "\n")


def _vector_envelope(tmp_path: Path, index: int = 1) -> Path:
    blocks = re.findall(r"~~~\n([0-9a-fA-F\s]+?)~~~", _text(SUIT_DIR / f"example{index}.txt"))
    path = tmp_path / f"example{index}.suit"
    path.write_bytes(bytes.fromhex("".join(blocks[-1].split())))
    return path


def _vector_key(tmp_path: Path) -> Path:
    pem = re.search(
        r"-----BEGIN PUBLIC KEY-----.*?-----END PUBLIC KEY-----", _text(VECTORS / "README.md"), re.S
    )
    assert pem is not None
    path = tmp_path / "suit-examples.pem"
    path.write_text(pem.group(0) + "\n")
    return path


@needs_vectors
def test_inspect_verifies_the_public_suit_example_with_its_published_key(tmp_path: Path) -> None:
    result = runner.invoke(
        firmware_app,
        ["inspect", str(_vector_envelope(tmp_path)), "--key", str(_vector_key(tmp_path))],
    )
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["verified"] is True and shown["sequence"] == 1
    assert shown["vendor_id"] == "fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe"
    assert shown["class_id"] == "1492af14-2569-5e48-bf42-9b2d51f2ab45"
    component = shown["components"][0]
    assert component["image_size"] == 34768 and component["uri"] == "http://example.com/file.bin"
    assert component["image_digest"]["alg"] == "sha-256"


@needs_vectors
def test_inspect_refuses_a_tampered_envelope_with_the_reason(tmp_path: Path) -> None:
    path = _vector_envelope(tmp_path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # inside the manifest: its digest no longer matches
    path.write_bytes(bytes(data))
    result = runner.invoke(
        firmware_app, ["inspect", str(path), "--key", str(_vector_key(tmp_path))]
    )
    assert result.exit_code == 1
    assert "does not verify" in result.output and "suit_digest_mismatch" in result.output
    other = tmp_path / "other.pem"
    other.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    wrong_key = runner.invoke(
        firmware_app, ["inspect", str(_vector_envelope(tmp_path, 2)), "--key", str(other)]
    )
    assert wrong_key.exit_code == 1 and "unknown_key" in wrong_key.output
    missing = runner.invoke(firmware_app, ["inspect", str(tmp_path / "nope"), "--key", str(other)])
    assert missing.exit_code == 1 and "cannot read" in missing.output


def test_upload_envelope_and_inspect_a_hub_package(world: World, tmp_path: Path) -> None:
    image = tmp_path / "fw.bin"
    image.write_bytes(b"\x7fELF" + bytes(6000))
    package = run_json(
        world,
        "upload",
        str(image),
        "--class-id",
        world.class_id,
        "--version",
        "2.0.0",
        "--release-notes",
        "fixes",
        "--required-product-id",
        world.product_id,
        "--chunk-size",
        "2048",
    )
    assert (package["version"], package["chunk_count"], package["release_notes"]) == (
        "2.0.0",
        3,
        "fixes",
    )
    out = tmp_path / "pkg.suit"
    fetched = run(world, "envelope", package["id"], "--out", str(out))
    assert fetched.exit_code == 0, fetched.output
    public = tmp_path / "firmware.pub.pem"
    public.write_bytes(
        Ed25519PublicKey.from_public_bytes(world.signer.public_key_bytes()).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    result = runner.invoke(firmware_app, ["inspect", str(out), "--key", str(public)])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["sequence"] == package["sequence"]
    assert shown["class_id"] == world.class_uuid
    assert shown["manifest_digest"] == package["manifest_digest"]
    assert len(shown["components"][0]["chunk_digests"]) == 3
    # The hub's own key file works too (the public half of the private key is used).
    private = tmp_path / "firmware.pem"
    world.signer.write_pem(private)
    assert runner.invoke(firmware_app, ["inspect", str(out), "--key", str(private)]).exit_code == 0
    refused = run(world, "upload", str(image), "--class-id", world.class_id, "--version", "1.0")
    assert refused.exit_code == 1 and "invalid_version" in refused.output
    listed = run_json(world, "packages", "--class-id", world.class_id)
    assert [p["id"] for p in listed["items"]] == [package["id"]]
    assert run(world, "envelope", "nope", "--out", str(out)).exit_code == 1


def test_rollout_commands(world: World, tmp_path: Path) -> None:
    package = world.package("1.0.0")
    devices = [world.device(tags=["lab"])[0] for _ in range(3)]
    created = run_json(
        world,
        "rollouts",
        "create",
        "--package-id",
        package["id"],
        "--name",
        "lab",
        "--wave",
        "34%",
        "--wave",
        "2",
        "--tag",
        "lab",
        "--failure-action",
        "abort",
        "--window",
        "00:00-23:59",
        "--device-timeout",
        "600",
    )
    assert created["state"] == "draft" and [w.get("percent") for w in created["waves"]] == [
        34,
        None,
    ]
    rid = created["id"]
    started = run_json(world, "rollouts", "start", rid)
    assert started["target_count"] == 3 and [w["planned"] for w in started["waves"]] == [2, 1]
    world.tick()
    jobs = run_json(world, "rollouts", "devices", rid, "--wave", "1")
    assert {j["device_id"] for j in jobs["items"]} < set(devices)
    assert all(j["state"] == "offered" for j in jobs["items"])
    assert run_json(world, "rollouts", "pause", rid, "--reason", "lunch")["state"] == "paused"
    assert run_json(world, "rollouts", "resume", rid)["state"] == "running"
    shown = run(world, "rollouts", "show", rid)
    assert shown.exit_code == 0 and "running" in shown.output
    assert run_json(world, "rollouts", "retry", rid)["retried"] == 0
    assert run_json(world, "rollouts", "cancel", rid)["state"] == "cancelled"
    again = run(world, "rollouts", "cancel", rid)
    assert again.exit_code == 1 and "invalid_state" in again.output
    assert run_json(world, "rollouts", "list", "--state", "cancelled")["total"] >= 1
    device = run_json(world, "device", devices[0])
    assert device["device_id"] == devices[0]


def test_wave_and_window_syntax() -> None:
    assert parse_wave("5%") == {"percent": 5} and parse_wave("20") == {"size": 20}
    assert parse_window("sat,sun@01:00-05:00") == {
        "days": ["sat", "sun"],
        "start": "01:00",
        "end": "05:00",
    }
    assert parse_window("22:00-02:00") == {"start": "22:00", "end": "02:00"}
    import typer

    for bad in ("five", "5%%"):
        with pytest.raises(typer.BadParameter):
            parse_wave(bad)
    with pytest.raises(typer.BadParameter):
        parse_window("nightly")
