"""``device-agent inspect-manifest``: verify a manifest file against the agent's anchors."""

import json

import pytest
from typer.testing import CliRunner

from device_agent.cli import app
from device_agent.identity import Identity, IdentityStore
from device_agent.trust_store import TrustStore
from tests.device_agent.test_trust import (
    ATTACKER,
    DEV,
    FIRMWARE,
    HUB,
    LEASE,
    NEXT,
    OTHER_DEV,
    T0,
    issued,
    rotation,
    signed,
)

runner = CliRunner()


@pytest.fixture
def state_dir(tmp_path):
    directory = tmp_path / "state"
    identity = Identity(
        device_id=DEV,
        mqtt_username=DEV,
        mqtt_password="pw",
        anchors=(HUB.anchor(), FIRMWARE.anchor("firmware")),
    )
    IdentityStore(directory).save(identity)
    return directory


def inspect(tmp_path, data, anchors, *extra):
    path = tmp_path / "manifest.cose"
    path.write_bytes(data)
    return runner.invoke(app, ["inspect-manifest", str(path), "--anchors", str(anchors), *extra])


def test_prints_the_verified_manifest_as_json(tmp_path, state_dir):
    result = inspect(tmp_path, signed(3), state_dir, "--now", str(issued(3)))
    assert result.exit_code == 0, result.output
    view = json.loads(result.stdout)
    assert view["device_id"] == DEV and view["seq"] == 3
    assert view["not_after"] == issued(3) + LEASE
    assert view["features"]["users"] == {"enabled": True, "limit": 10}
    assert view["features"]["legacy"] == {"enabled": False}


def test_identity_file_can_be_named_directly(tmp_path, state_dir):
    result = inspect(tmp_path, signed(3), state_dir / "identity.cbor", "--now", str(issued(3)))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("data", "now", "reason"),
    [
        (signed(3, key=ATTACKER), issued(3), "BadSignature"),
        (signed(3)[:-1] + b"\x00", issued(3), "BadSignature"),
        (signed(3, device=OTHER_DEV), issued(3), "WrongDevice"),
        (signed(3), issued(3) + LEASE, "Expired"),
        (b"not cbor", issued(3), "Malformed"),
    ],
)
def test_exits_1_with_the_reason(tmp_path, state_dir, data, now, reason):
    result = inspect(tmp_path, data, state_dir, "--now", str(now))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"{reason}: ")
    assert result.stdout == ""


def test_default_now_is_the_clock(tmp_path, state_dir):
    result = inspect(tmp_path, signed(3, issued_at=T0 - 10 * LEASE), state_dir)
    assert result.exit_code == 1 and "Expired" in result.stderr


def test_json_anchors_file(tmp_path):
    anchors = tmp_path / "anchors.json"
    anchors.write_text(
        json.dumps(
            [
                {"kid": HUB.kid.hex(), "alg": "EdDSA", "key": HUB.public.hex(), "role": "manifest"},
                {"kid": "ff", "alg": -8, "key": FIRMWARE.public.hex(), "role": "firmware"},
            ]
        )
    )
    ok = inspect(tmp_path, signed(3, device=OTHER_DEV), anchors, "--now", str(issued(3)))
    assert ok.exit_code == 0, ok.output  # JSON anchors bind no device
    bad = inspect(tmp_path, signed(3, key=FIRMWARE), anchors, "--now", str(issued(3)))
    assert bad.exit_code == 1 and bad.stderr.startswith("BadSignature")


def test_trust_state_after_a_rotation(tmp_path, state_dir):
    identity = IdentityStore(state_dir).load()
    TrustStore.open(state_dir, identity).accept_rotation(rotation(1, new=(NEXT,)), now=T0)
    old = inspect(tmp_path, signed(3), state_dir / "trust.cbor", "--now", str(issued(3)))
    assert old.exit_code == 1 and old.stderr.startswith("BadSignature")
    new = inspect(tmp_path, signed(3, key=NEXT), state_dir, "--now", str(issued(3)))
    assert new.exit_code == 0, new.output


@pytest.mark.parametrize("content", [None, "{}", "[{}]", "not json"])
def test_unusable_anchors_exit_2(tmp_path, content):
    anchors = tmp_path / "anchors.json"
    if content is not None:
        anchors.write_text(content)
    result = inspect(tmp_path, signed(3), anchors)
    assert result.exit_code == 2 and result.stderr.startswith("error:")


def test_state_dir_without_identity_exits_2(tmp_path):
    (tmp_path / "empty").mkdir()
    result = inspect(tmp_path, signed(3), tmp_path / "empty")
    assert result.exit_code == 2 and "identity" in result.stderr
