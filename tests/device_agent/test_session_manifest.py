"""The session turns manifest deliveries into trust-store updates and acknowledgements."""

from device_agent.session import DeviceSession
from protocols.messages import (
    Hello,
    ManifestAck,
    ManifestDelivery,
    RotationDelivery,
    decode_as,
    encode_message,
)
from tests.device_agent.test_trust import ATTACKER, DEV, T0, rotation, signed
from tests.device_agent.test_trust_store import IDENTITY, open_store

TOPIC = f"d/{DEV}/down/manifest"


def _session(tmp_path):
    return DeviceSession(IDENTITY, agent_version="1", boot_epoch=1, trust=open_store(tmp_path))


def _ack(out):
    assert len(out) == 1 and out[0].topic == f"d/{DEV}/up/manifest_ack"
    return decode_as(ManifestAck, out[0].payload)


def test_accepted_then_unchanged_then_rollback(tmp_path):
    session = _session(tmp_path)
    first = encode_message(ManifestDelivery(signed=signed(3)))
    assert _ack(session.on_message(TOPIC, first, now=T0)) == ManifestAck(seq=3, status="accepted")
    assert session.manifest_seq == 3
    assert _ack(session.on_message(TOPIC, first, now=T0)).status == "unchanged"
    older = encode_message(ManifestDelivery(signed=signed(2)))
    refused = _ack(session.on_message(TOPIC, older, now=T0))
    assert refused.status == "rejected" and refused.reason.startswith("rollback")
    assert session.manifest_seq == 3


def test_forged_manifest_is_rejected_and_changes_nothing(tmp_path):
    session = _session(tmp_path)
    forged = encode_message(ManifestDelivery(signed=signed(9, key=ATTACKER)))
    ack = _ack(session.on_message(TOPIC, forged, now=T0))
    assert ack.status == "rejected" and ack.seq == 0
    assert session.manifest_seq == 0


def test_hello_reports_the_held_sequence_after_a_restart(tmp_path):
    session = _session(tmp_path)
    session.on_message(TOPIC, encode_message(ManifestDelivery(signed=signed(4))), now=T0)
    restarted = _session(tmp_path)
    hello = decode_as(Hello, restarted.on_connected()[1].payload)
    assert hello.manifest_seq == 4


def test_rotation_delivery_is_applied(tmp_path):
    session = _session(tmp_path)
    doc = encode_message(RotationDelivery(signed=rotation(1)))
    assert session.on_message(f"d/{DEV}/down/rotation", doc, now=T0) == []
    assert session.trust.state.rotation_seq == 1
    # A rotation from an untrusted key is logged and ignored.
    bad = encode_message(RotationDelivery(signed=rotation(2, by=ATTACKER)))
    session.on_message(f"d/{DEV}/down/rotation", bad, now=T0)
    assert session.trust.state.rotation_seq == 1


def test_runner_exposes_the_application_api(tmp_path):
    import pytest

    from device_agent.config import parse_config
    from device_agent.errors import StateError
    from device_agent.runner import AgentRunner

    config = parse_config({"device": {"serial": "SN-1"}, "claim": {"token": "t"}}, base=tmp_path)
    runner = AgentRunner(config)
    with pytest.raises(StateError):
        _ = runner.features
    runner.trust = open_store(config.state_dir)
    runner.trust.accept_manifest(signed(1), now=T0)
    features = runner.features
    assert features.is_enabled("camera.hdr", now=T0) and not features.is_enabled("legacy", now=T0)
    assert features.limit("users", now=T0) == 10
