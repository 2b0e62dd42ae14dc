"""The [metering] table, the wiring into a session, and the meter/usage commands."""

import json
import math

import pytest
from typer.testing import CliRunner

from device_agent.cli import app
from device_agent.components import ComponentContext, default_components
from device_agent.config import load_config, parse_config
from device_agent.errors import ConfigError, StateError
from device_agent.identity import IdentityStore
from device_agent.metering import wiring
from device_agent.metering.api import buffer_stats, open_meter_for, read_boot_epoch
from device_agent.metering.component import MeteringComponent
from device_agent.metering.config import MeteringSettings, parse_settings
from device_agent.metering.errors import InvalidUsage
from device_agent.metering.shell import parse_quantity
from device_agent.trust_store import TrustStore
from tests.device_agent.test_trust import issued, signed
from tests.device_agent.test_trust_store import IDENTITY


def test_no_table_means_no_metering_and_an_empty_table_means_defaults():
    assert parse_settings({}) is None
    assert parse_settings({"metering": {}}) == MeteringSettings()
    assert MeteringSettings().max_records == 100_000
    settings = parse_settings(
        {
            "metering": {
                "enabled": True,
                "max_records": 50,
                "batch_max_records": 10,
                "batch_max_bytes": 2048,
                "max_in_flight": 2,
                "retry_seconds": 5,
                "flush_seconds": 0.5,
            }
        }
    )
    assert settings == MeteringSettings(True, 50, 10, 2048, 2, 5.0, 0.5)


@pytest.mark.parametrize(
    "table",
    [
        {"enabled": "yes"},
        {"max_records": 0},
        {"max_records": 10_000_001},
        {"max_records": True},
        {"batch_max_records": 1001},
        {"batch_max_bytes": 49_153},
        {"batch_max_bytes": 100},
        {"max_in_flight": 0},
        {"retry_seconds": 0},
        {"retry_seconds": math.nan},
        {"retry_seconds": math.inf},
        {"flush_seconds": -1},
        {"flush_seconds": "1"},
        {"buffer_size": 10},
    ],
)
def test_bad_tables_are_config_errors(table):
    with pytest.raises(ConfigError, match="metering"):
        parse_settings({"metering": table})


def _config(tmp_path, metering=None):
    raw = {"device": {"serial": "SN-1", "state_dir": "state"}, "claim": {"token": "t"}}
    if metering is not None:
        raw["metering"] = metering
    return parse_config(raw, base=tmp_path)


def _context(config):
    return ComponentContext(
        config=config,
        identity=IDENTITY,
        trust=TrustStore.open(config.state_dir, IDENTITY),
        state_dir=config.state_dir,
        clock=lambda: issued(1),
    )


def test_wiring_returns_the_component_only_when_enabled(tmp_path):
    assert wiring.components(_context(_config(tmp_path))) == []
    assert wiring.components(_context(_config(tmp_path, {"enabled": False}))) == []
    with pytest.raises(ConfigError):
        wiring.components(_context(_config(tmp_path, {"bogus": 1})))


def test_the_component_mints_in_the_runners_boot_epoch(tmp_path):
    config = _config(tmp_path, {"max_records": 5, "batch_max_records": 2})
    store = IdentityStore(config.state_dir)
    for _ in range(3):
        store.next_boot_epoch()  # the runner does this before building components
    assert read_boot_epoch(config.state_dir) == 3
    components = default_components(_context(config))
    metering = [c for c in components if isinstance(c, MeteringComponent)]
    assert len(metering) == 1
    buffer = metering[0].buffer
    assert buffer.stats().boot_epoch == 3 and buffer.stats().max_records == 5
    assert metering[0].settings.batch_max_records == 2
    assert metering[0].topic == f"d/{IDENTITY.device_id}/up/usage"


def test_open_meter_for_needs_the_table(tmp_path):
    with pytest.raises(ConfigError, match="not enabled"):
        open_meter_for(_config(tmp_path))


def test_a_corrupt_boot_counter_is_a_state_error(tmp_path):
    (tmp_path / "boot.cbor").write_bytes(b"\xff")
    with pytest.raises(StateError):
        read_boot_epoch(tmp_path)


@pytest.mark.parametrize(
    ("text", "value"), [("1", 1), ("0", 0), ("2.5", 2.5), ("1e3", 1000.0), ("-1", -1.0)]
)
def test_shell_quantities(text, value):
    parsed = parse_quantity(text)
    assert parsed == value and type(parsed) is type(value)


def test_shell_quantities_that_are_not_numbers():
    with pytest.raises(InvalidUsage):
        parse_quantity("ten")


@pytest.fixture
def agent_toml(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text(
        '[device]\nserial = "SN-1"\nstate_dir = "state"\n[claim]\ntoken = "t"\n'
        "[metering]\nmax_records = 2\n"
    )
    state = tmp_path / "state"
    IdentityStore(state).save(IDENTITY)
    IdentityStore(state).next_boot_epoch()
    TrustStore.open(state, IDENTITY).accept_manifest(signed(1), now=issued(1))
    return path


def _meter(path, *args):
    now = str(issued(1))
    return CliRunner().invoke(app, ["meter", "--config", str(path), "--now", now, "--", *args])


def test_meter_and_usage_commands(agent_toml):
    first = _meter(agent_toml, "api-calls", "60")
    assert first.exit_code == 0, first.output
    document = json.loads(first.stdout)
    assert (document["boot_epoch"], document["seq"], document["used"]) == (1, 1, "60")
    assert document["ts"] == issued(1) and document["cap"] == 100
    over = _meter(agent_toml, "api-calls", "41")  # cap 100 per day, block
    assert over.exit_code == 1 and "cap_exceeded" in over.output
    assert (
        CliRunner()
        .invoke(
            app,
            [
                "meter",
                "-c",
                str(agent_toml),
                "--now",
                str(issued(1)),
                "--dim",
                "u1",
                "camera.hdr",
                "1.5",
            ],
        )
        .exit_code
        == 0
    )
    full = _meter(agent_toml, "camera.hdr", "1")
    assert full.exit_code == 1 and "buffer_full" in full.output
    for bad in (
        ["api-calls", "-1"],
        ["api-calls", "nan"],
        ["api-calls", "inf"],
        ["api-calls", "1e13"],
    ):
        result = _meter(agent_toml, *bad)
        assert result.exit_code == 2 and "invalid" in result.output, bad
    assert _meter(agent_toml, "legacy", "1").exit_code == 1  # disabled feature
    usage = CliRunner().invoke(app, ["usage", "--config", str(agent_toml)])
    assert usage.exit_code == 0, usage.output
    stats = json.loads(usage.stdout)
    assert (stats["pending"], stats["dropped"], stats["acknowledged"]) == (2, 1, 0)
    assert stats["cap_refused"] == 1 and stats["max_records"] == 2
    assert stats["periods"][0]["meter"] == "api-calls" and stats["periods"][0]["used"] == "60"
    state = load_config(agent_toml).state_dir
    assert buffer_stats(state).pending == 2


def test_usage_without_a_buffer_says_so(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text('[device]\nserial = "SN-1"\n[claim]\ntoken = "t"\n')
    result = CliRunner().invoke(app, ["usage", "--config", str(path)])
    assert result.exit_code == 1 and "nothing was metered" in result.output


def test_meter_without_metering_configured_is_an_error(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text('[device]\nserial = "SN-1"\n[claim]\ntoken = "t"\n')
    result = _meter(path, "api-calls", "1")
    assert result.exit_code == 2 and "not enabled" in result.output
