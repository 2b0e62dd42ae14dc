"""The generated Mosquitto configuration: content and safety properties."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from hub.broker.mosquitto import (
    CLAIM_MAX_QUEUED_MESSAGES,
    PACKET_HEADROOM,
    ManagedClaimMosquitto,
    MosquittoFiles,
    mosquitto_version,
    render_acl,
    render_claim_acl,
    render_claim_hub_acl,
    render_password_file,
    write_claim_config,
    write_config,
)
from hub.broker.passwords import hash_password
from tests.backends import mosquitto_binary

HUB_HASH = hash_password("hub-secret")
DEV_HASH = hash_password("dev-secret")


def write(tmp_path: Path) -> MosquittoFiles:
    return write_config(
        tmp_path,
        host="127.0.0.1",
        port=18883,
        hub_username="hub-main",
        hub_password_hash=HUB_HASH,
        device_credentials=[("dev-a", DEV_HASH)],
        max_payload_bytes=4096,
    )


def write_claim(tmp_path: Path) -> MosquittoFiles:
    return write_claim_config(
        tmp_path,
        host="127.0.0.1",
        port=18884,
        hub_port=18885,
        hub_username="hub-main",
        hub_password_hash=HUB_HASH,
        max_payload_bytes=4096,
    )


def listener_sections(config: str) -> list[list[str]]:
    sections: list[list[str]] = []
    for line in config.splitlines():
        if line.startswith("listener "):
            sections.append([])
        if sections and line and not line.startswith("#"):
            sections[-1].append(line)
    return sections


def rules(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


@pytest.mark.parametrize("claim", [False, True])
def test_global_settings(tmp_path: Path, claim: bool) -> None:
    files = write_claim(tmp_path) if claim else write(tmp_path)
    config = files.config.read_text()
    queued = CLAIM_MAX_QUEUED_MESSAGES if claim else 100_000
    inflight = CLAIM_MAX_QUEUED_MESSAGES if claim else 1_000
    for expected in (
        "per_listener_settings true",
        "persistence false",
        "message_size_limit 4096",
        f"max_packet_size {4096 + PACKET_HEADROOM}",
        f"max_queued_messages {queued}",
        f"max_inflight_messages {inflight}",
        "retain_available false",  # global in 2.0.11; a retained PUBLISH disconnects
    ):
        assert expected in config.splitlines()
    assert "clientid_prefixes" not in config  # global in 2.0.11: would refuse devices


def test_device_broker_has_one_authenticated_listener(tmp_path: Path) -> None:
    files = write(tmp_path)
    (main,) = listener_sections(files.config.read_text())
    assert main[0] == "listener 18883 127.0.0.1"
    assert "allow_anonymous false" in main
    assert "allow_anonymous true" not in files.config.read_text()
    assert "use_username_as_clientid true" in main
    assert f"password_file {files.password_file}" in main
    assert f"acl_file {files.acl_file}" in main
    assert files.claim_acl_file is None
    assert "claim" not in files.acl_file.read_text()


def test_claim_broker_listeners(tmp_path: Path) -> None:
    files = write_claim(tmp_path)
    config = files.config.read_text()
    claim, hub = listener_sections(config)
    assert claim[0] == "listener 18884 127.0.0.1"
    assert "allow_anonymous true" in claim
    assert "allow_zero_length_clientid false" in claim
    assert f"acl_file {files.claim_acl_file}" in claim
    # No password file: the agent sends username = client id, which a password
    # file would refuse; without one the username grants nothing (no user sections).
    assert not any(line.startswith("password_file") for line in claim)
    assert hub[0] == "listener 18885 127.0.0.1"
    assert "allow_anonymous false" in hub
    assert f"password_file {files.password_file}" in hub
    assert f"acl_file {files.acl_file}" in hub
    # The hub's secret random client id must survive: never replaced by its username.
    assert "use_username_as_clientid" not in config
    assert files.password_file.read_text().splitlines() == [f"hub-main:{HUB_HASH}"]
    assert stat.S_IMODE(files.password_file.stat().st_mode) == 0o600


def test_claim_broker_files_do_not_clash_with_the_device_broker(tmp_path: Path) -> None:
    device, claim = write(tmp_path), write_claim(tmp_path)
    device_paths = {device.config, device.password_file, device.acl_file, device.log_file}
    claim_paths = {claim.config, claim.password_file, claim.acl_file, claim.log_file}
    assert claim.claim_acl_file is not None
    assert not device_paths & (claim_paths | {claim.claim_acl_file})
    assert device.password_file.read_text().count("\n") == 2


def test_claim_broker_needs_two_ports(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="different ports"):
        write_claim_config(
            tmp_path,
            host="127.0.0.1",
            port=18884,
            hub_port=18884,
            hub_username="hub-main",
            hub_password_hash=HUB_HASH,
            max_payload_bytes=4096,
        )
    with pytest.raises(ValueError, match="different ports"):
        ManagedClaimMosquitto(
            binary="mosquitto",
            directory=tmp_path,
            host="127.0.0.1",
            port=18884,
            hub_port=18884,
            hub_username="hub-main",
            hub_password_hash=HUB_HASH,
            max_payload_bytes=4096,
        )


def test_password_file_holds_hashes_only_and_is_private(tmp_path: Path) -> None:
    files = write(tmp_path)
    assert files.password_file.read_text().splitlines() == [
        f"hub-main:{HUB_HASH}",
        f"dev-a:{DEV_HASH}",
    ]
    assert stat.S_IMODE(files.password_file.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("username", "password_hash"),
    [
        ("dev-a", "plaintext"),
        ("dev-a:x", DEV_HASH),
        ("dev-a\nhub-main", DEV_HASH),
        ("claim-k1", DEV_HASH),
        ("dev-a", DEV_HASH + "\nhub-x:" + DEV_HASH),
    ],
)
def test_password_file_rejects_bad_entries(username: str, password_hash: str) -> None:
    with pytest.raises(ValueError):
        render_password_file([(username, password_hash)])


def test_acl_grants() -> None:
    assert rules(render_acl("hub-main")) == [
        "user hub-main",
        "topic read d/+/up/#",
        "topic write d/+/down/#",
        "pattern write d/%u/up/+",
        "pattern read d/%u/down/#",
    ]
    assert rules(render_claim_hub_acl("hub-main")) == [
        "user hub-main",
        "topic read claim/+/req",
        "topic write claim/+/res",
    ]
    assert rules(render_claim_acl()) == ["pattern write claim/%c/req", "pattern read claim/%c/res"]
    for render in (render_acl, render_claim_hub_acl):
        with pytest.raises(ValueError):
            render("dev-a")


def test_mosquitto_version() -> None:
    binary = mosquitto_binary()
    if binary is None:
        pytest.skip("no mosquitto binary")
    assert mosquitto_version(binary)[0].isdigit()
