"""The [firmware] table and the component factory."""

from __future__ import annotations

from pathlib import Path

import pytest

from device_agent.components import ComponentContext, default_components
from device_agent.config import parse_config
from device_agent.errors import ConfigError
from device_agent.firmware import wiring
from device_agent.firmware.component import FirmwareComponent
from device_agent.firmware.http import HttpRangeFetcher
from device_agent.firmware.settings import parse_settings
from device_agent.identity import Identity
from device_agent.trust_store import TrustStore
from protocols.firmware_messages import FirmwareQuery
from protocols.messages import TrustAnchor, decode_message
from tests.device_agent.firmware.fakes import CLASS, DEV, VENDOR, public_key

BASE = {"vendor_id": VENDOR, "class_id": CLASS}


def test_defaults():
    parsed = parse_settings(BASE, base=Path("/x"))
    assert (parsed.transport, parsed.request_size, parsed.in_flight) == ("mqtt", 16, 32)
    assert parsed.health_check == "pass" and parsed.factory_image is None


def test_ids_are_normalised_and_paths_resolved():
    parsed = parse_settings(
        {**BASE, "vendor_id": VENDOR.upper(), "factory_image": "f.bin"}, base=Path("/x")
    )
    assert parsed.vendor_id == VENDOR and parsed.factory_image == Path("/x/f.bin")


@pytest.mark.parametrize(
    "table",
    [
        {},
        {"vendor_id": VENDOR},
        {**BASE, "vendor_id": "not-a-uuid"},
        {**BASE, "transport": "carrier-pigeon"},
        {**BASE, "transport": "http"},
        {**BASE, "http_url": "ftp://x"},
        {**BASE, "request_size": 17},
        {**BASE, "request_size": 0},
        {**BASE, "in_flight": True},
        {**BASE, "health_check": "maybe"},
        {**BASE, "factory_image": ""},
        {**BASE, "unknown": 1},
    ],
)
def test_invalid_tables_are_refused(table):
    with pytest.raises(ConfigError):
        parse_settings(table, base=Path("/x"))


def context(tmp_path: Path, firmware: dict | None) -> ComponentContext:
    raw: dict = {"device": {"serial": "SN-1", "state_dir": "state"}, "claim": {"token": "t"}}
    if firmware is not None:
        raw["firmware"] = firmware
    config = parse_config(raw, base=tmp_path)
    raw_key = public_key().key.public_bytes_raw()  # type: ignore[union-attr]
    identity = Identity(
        device_id=DEV,
        mqtt_username=DEV,
        mqtt_password="pw",
        anchors=(TrustAnchor(kid=b"fw-test", alg=-8, key=raw_key, role="firmware"),),
    )
    trust = TrustStore.open(config.state_dir, identity)
    return ComponentContext(config, identity, trust, config.state_dir, clock=lambda: 1000.0)


def test_no_table_no_component(tmp_path):
    assert wiring.components(context(tmp_path, None)) == []


def test_the_component_is_built_provisioned_and_asks_on_connect(tmp_path):
    ctx = context(tmp_path, dict(BASE, factory_sequence=4))
    components = default_components(ctx)
    firmware = [c for c in components if isinstance(c, FirmwareComponent)]
    assert len(firmware) == 1
    component = firmware[0]
    assert (ctx.state_dir / "firmware" / "slot_a.bin").read_bytes() == b"factory image of SN-1\n"
    assert component.installed_seq == 4
    out = component.on_connected(now=1)
    assert decode_message(out[0].payload) == FirmwareQuery(installed_seq=4)
    assert out[0].topic == f"d/{DEV}/up/firmware"
    # the device's firmware anchor is the key the processor uses
    assert [key.kid for key in component._keys()] == [b"fw-test"]
    # a second start keeps the provisioned directory
    again = wiring.components(ctx)[0]
    assert isinstance(again, FirmwareComponent) and again.installed_seq == 4


def test_a_factory_image_file(tmp_path):
    image = tmp_path / "state" / "factory.bin"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"real factory image")
    component = wiring.components(context(tmp_path, dict(BASE, factory_image="factory.bin")))[0]
    assert isinstance(component, FirmwareComponent)
    assert component.running_image() == b"real factory image"


def test_a_missing_factory_image_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError):
        wiring.components(context(tmp_path, dict(BASE, factory_image="nope.bin")))


def test_http_transport_builds_a_fetcher(tmp_path):
    ctx = context(tmp_path, dict(BASE, transport="http", http_url="http://127.0.0.1:9/"))
    component = wiring.components(ctx)[0]
    assert isinstance(component, FirmwareComponent)
    assert isinstance(component._fetcher, HttpRangeFetcher)
