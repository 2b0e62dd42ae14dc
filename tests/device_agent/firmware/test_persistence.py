"""The on-disk files: the bootloader, tampered or contradictory state is refused."""

import pytest

from device_agent.errors import StateError
from device_agent.firmware.slots import (
    BOOT_FILE,
    INSTALL_FILE,
    BootRecord,
    FirmwareDir,
    power_on,
)
from protocols import cbor
from tests.device_agent.firmware.harness import OLD, Sim, target


def test_the_bootloader_tries_the_trial_slot_n_times_then_falls_back():
    record = BootRecord(active="a", pending="b", attempts=0, confirmed=False)
    booted = []
    for _ in range(4):
        record, slot = power_on(record, 3)
        booted.append(slot)
    assert booted == ["b", "b", "b", "a"] and record == BootRecord(active="a")
    assert power_on(BootRecord(active="b"), 3) == (BootRecord(active="b"), "b")


def test_provisioning_writes_the_image_and_a_confirmed_record(tmp_path):
    fw = FirmwareDir(tmp_path)
    fw.provision(OLD, "a")
    assert fw.read_boot() == BootRecord(active="a")
    assert fw.slot_path("a").read_bytes() == OLD
    assert (tmp_path / BOOT_FILE).stat().st_mode & 0o777 == 0o600
    with pytest.raises(StateError, match="already provisioned"):
        fw.provision(OLD, "a")


def test_an_unprovisioned_directory_is_refused(tmp_path):
    with pytest.raises(StateError, match="provision"):
        Sim(tmp_path).power_on()


@pytest.mark.parametrize(
    "doc",
    [
        {"active": "c", "pending": None, "attempts": 0, "confirmed": True},
        {"active": "a", "pending": "a", "attempts": 0, "confirmed": False},
        {"active": "a", "pending": "b", "attempts": 0, "confirmed": True},
        {"active": "a", "pending": None, "attempts": -1, "confirmed": True},
        {"active": "a", "pending": None, "attempts": 0},
    ],
)
def test_a_bad_boot_record_is_refused(tmp_path, doc):
    (tmp_path / BOOT_FILE).write_bytes(cbor.encode(doc))
    with pytest.raises(StateError, match="refusing"):
        FirmwareDir(tmp_path).read_boot()


@pytest.fixture
def installed(tmp_path):
    sim = Sim(tmp_path)
    sim.provision()
    device = sim.power_on()
    device.start(target())
    device.run()
    return sim


def test_a_corrupt_install_state_is_refused_not_replaced(installed):
    path = installed.root / INSTALL_FILE
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(StateError, match="refusing"):
        installed.power_on()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("step", "bogus"),
        ("written", 10_000),
        ("slot", "c"),
        ("device_id", "dev-other"),
        ("reason", "no"),
        ("boot_attempts", 99),
        ("outbox", [1]),
        ("target", None),
    ],
)
def test_a_tampered_install_state_is_refused(installed, field, value):
    path = installed.root / INSTALL_FILE
    doc = cbor.decode(path.read_bytes())
    doc[field] = value
    path.write_bytes(cbor.encode(doc))
    with pytest.raises(StateError, match="refusing"):
        installed.power_on()


def test_a_trial_slot_the_install_state_does_not_explain_is_refused(installed):
    (installed.root / INSTALL_FILE).unlink()
    fw = FirmwareDir(installed.root)
    fw.write_boot(BootRecord(active="b", pending="a", attempts=0, confirmed=False))
    with pytest.raises(StateError, match="trial slot"):
        installed.power_on()
