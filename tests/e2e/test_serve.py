from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import inspect, select
from sqlalchemy.engine import make_url

from hub.db.engine import make_engine, make_session_factory
from hub.db.migrate import current_revisions, head_revisions
from hub.registry.models import Tenant
from hub.registry.tenants import create_tenant
from hub.settings import load_settings
from simulator.processes import HubProcess, free_port
from tests.backends import mosquitto_binary, postgres_url
from tests.hub.fleet import Fleet, new_key, raw
from tests.support.mqtt import TestClient, claim_client_id
from tests.support.net import wait_for_port
from tests.support.pg import fresh_schema

pytestmark = pytest.mark.e2e

HUB = [sys.executable, "-m", "hub.cli.main"]
NEEDS_PG = pytest.mark.skipif(postgres_url() is None, reason="HUB_TEST_DATABASE_URL unset")
NEEDS_MOSQUITTO = pytest.mark.skipif(mosquitto_binary() is None, reason="no mosquitto binary")
DATABASES = ["sqlite", pytest.param("postgresql", marks=NEEDS_PG)]
BROKERS = ["embedded", pytest.param("mosquitto", marks=NEEDS_MOSQUITTO)]
SCHEMA_TABLES = {
    "alembic_version",
    "tenants",
    "api_keys",
    "products",
    "device_classes",
    "devices",
    "claim_batches",
    "claim_batch_devices",
    "device_credentials",
    "claim_nonces",
    "audit_events",
}


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any HUB_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    env.update(extra)
    return env


def run_hub(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HUB, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=90, check=False
    )


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@contextmanager
def database(kind: str, tmp_path: Path) -> Iterator[str]:
    """A fresh SQLite file or PostgreSQL schema."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'hub.db'}"
        return
    base = postgres_url()
    assert base is not None
    with fresh_schema(base) as url:
        yield url


@contextmanager
def running(hub: HubProcess) -> Iterator[HubProcess]:
    hub.start()
    try:
        yield hub
    finally:
        status = hub.stop()
        assert status == 0, f"hub exited with {status}:\n{hub.log_tail()}"


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port held by a listening socket for the whole test."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


# ---------------------------------------------------------------- (1) taken ports


def serve_env(tmp_path: Path, broker: str = "embedded", **ports: int) -> dict[str, str]:
    mqtt_port = ports.get("mqtt", free_port())
    env = clean_env(
        HUB_DATA_DIR=str(tmp_path / "data"),
        HUB_BROKER=broker,
        HUB_MQTT_PORT=str(mqtt_port),
        HUB_CLAIM_MQTT_PORT=str(ports.get("claim", free_port())),
        HUB_API_PORT=str(ports.get("api", free_port())),
    )
    if broker == "mosquitto":
        binary = mosquitto_binary()
        assert binary is not None
        env["HUB_MOSQUITTO_BINARY"] = binary
    return env


def assert_port_in_use_failure(result: subprocess.CompletedProcess[str], port: int) -> None:
    output = result.stdout + result.stderr
    assert result.returncode not in (0, None), output
    assert str(port) in output, output
    assert "in use" in output, output
    assert "Traceback" not in output, output
    assert "hub stopped" not in output


@pytest.mark.parametrize("broker", BROKERS)
def test_taken_mqtt_port_fails_fast_with_clear_message(
    tmp_path: Path, taken_port: int, broker: str
) -> None:
    env = serve_env(tmp_path, broker, mqtt=taken_port)
    result = run_hub(["serve"], env, tmp_path)
    assert_port_in_use_failure(result, taken_port)
    assert "MQTT" in result.stdout + result.stderr


def test_taken_api_port_fails_fast_with_clear_message(tmp_path: Path, taken_port: int) -> None:
    env = serve_env(tmp_path, api=taken_port)
    mqtt_port = int(env["HUB_MQTT_PORT"])
    result = run_hub(["serve"], env, tmp_path)
    assert_port_in_use_failure(result, taken_port)
    assert "API" in result.stdout + result.stderr
    # Nothing was left behind on the MQTT port.
    assert port_is_free(mqtt_port)


# ---------------------------------------------------------------- (2) signals


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_the_hub_cleanly(tmp_path: Path, signum: signal.Signals) -> None:
    hub = HubProcess(data_dir=tmp_path / "hub")
    hub.start()
    assert hub.process is not None
    try:
        hub.process.send_signal(signum)
        status = hub.process.wait(30)
    finally:
        hub.stop()  # kills it if the signal was ignored
    log = hub.log_path.read_text(errors="replace")
    assert status == 0, log
    assert "hub stopped" in log
    assert "Traceback" not in log
    # Broker and API released their ports.
    assert port_is_free(hub.mqtt_port)
    assert port_is_free(hub.api_port)


# ---------------------------------------------------------------- (3) db upgrade


def head_revision(url: str) -> frozenset[str]:
    heads = head_revisions(url)
    assert heads
    return heads


@pytest.mark.parametrize("kind", DATABASES)
def test_db_upgrade_creates_schema_and_is_idempotent(tmp_path: Path, kind: str) -> None:
    with database(kind, tmp_path) as url:
        env = clean_env(HUB_DATA_DIR=str(tmp_path / "unused"))
        first = run_hub(["db", "upgrade", "--database-url", url], env, tmp_path)
        assert first.returncode == 0, first.stderr
        assert "up to date" in first.stdout
        engine = make_engine(url)
        try:
            assert set(inspect(engine).get_table_names()) >= SCHEMA_TABLES
            assert current_revisions(url) == head_revision(url)
            now = datetime(2030, 1, 1, tzinfo=UTC)
            with make_session_factory(engine)() as s:
                tenant, _ = create_tenant(s, "survives-upgrade", now)
                tenant_id = tenant.id
                s.commit()
            second = run_hub(["db", "upgrade", "--database-url", url], env, tmp_path)
            assert second.returncode == 0, second.stderr
            assert "up to date" in second.stdout
            assert current_revisions(url) == head_revision(url)
            with make_session_factory(engine)() as s:
                assert s.scalars(select(Tenant.id)).all() == [tenant_id]
        finally:
            engine.dispose()


def test_db_upgrade_default_sqlite_in_a_new_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh" / "data"
    result = run_hub(["db", "upgrade"], clean_env(HUB_DATA_DIR=str(data_dir)), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    url = f"sqlite:///{(data_dir / 'hub.db').resolve()}"
    assert current_revisions(url) == head_revision(url)


# ---------------------------------------------------------------- (4) settings


def test_load_settings_toml_with_env_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("HUB_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HUB_CONFIG", "")  # restored after the test; load_settings sets it
    config = tmp_path / "hub.toml"
    config.write_text(
        'data_dir = "/srv/hub"\n'
        "mqtt_port = 12001\n"
        "api_port = 12002\n"
        'log_level = "DEBUG"\n'
        "max_payload_bytes = 4096\n"
        'database_url = "postgresql+psycopg://hub:pw@db.example/hub"\n'
    )
    settings = load_settings(config)
    assert settings.data_dir == Path("/srv/hub")
    assert (settings.mqtt_port, settings.api_port) == (12001, 12002)
    assert (settings.log_level, settings.max_payload_bytes) == ("DEBUG", 4096)
    assert settings.effective_database_url == "postgresql+psycopg://hub:pw@db.example/hub"
    assert settings.broker == "embedded"  # not in the file: the default

    monkeypatch.setenv("HUB_API_PORT", "13000")
    settings = load_settings(config)
    assert settings.api_port == 13000  # the environment wins over the file
    assert settings.mqtt_port == 12001  # the rest still comes from the file

    assert load_settings(config, api_port=14000, mqtt_port=None).api_port == 14000
    assert load_settings(config, mqtt_port=None).mqtt_port == 12001


def test_load_settings_refuses_unknown_keys_and_bad_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("HUB_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HUB_CONFIG", "")
    typo = tmp_path / "typo.toml"
    typo.write_text("mqtt_prot = 1884\n")
    with pytest.raises(ValidationError, match="mqtt_prot"):
        load_settings(typo)
    bad = tmp_path / "bad.toml"
    bad.write_text("api_port = 70000\n")
    with pytest.raises(ValidationError, match="api_port"):
        load_settings(bad)


def test_load_settings_defaults_without_file(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("HUB_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HUB_MQTT_PORT", "18830")
    settings = load_settings()
    assert settings.mqtt_port == 18830
    assert settings.api_port == 8080
    assert settings.effective_database_url.startswith("sqlite:///")
    assert settings.effective_database_url.endswith("/.hub-data/hub.db")


def wait_healthy(process: subprocess.Popen[bytes], api_port: int, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"hub exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{api_port}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"hub did not come up:\n{log.read_text()}")


def stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
    return process.returncode


def test_serve_reads_toml_config_and_env_overrides_one_key(tmp_path: Path) -> None:
    data_dir = tmp_path / "from-toml"
    mqtt_port, toml_api_port, env_api_port = free_port(), free_port(), free_port()
    config = tmp_path / "hub.toml"
    config.write_text(
        f'data_dir = "{data_dir}"\n'
        f"mqtt_port = {mqtt_port}\n"
        f"api_port = {toml_api_port}\n"
        'broker = "embedded"\n'
        'log_level = "INFO"\n'
    )
    log = tmp_path / "hub.log"
    env = clean_env(HUB_API_PORT=str(env_api_port))
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*HUB, "serve", "--config", str(config)],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_healthy(process, env_api_port, log)
        # The broker runs where the file says; the API where the environment says.
        wait_for_port(mqtt_port, timeout=10)
        assert port_is_free(toml_api_port)
    finally:
        status = stop(process)
    text = log.read_text(errors="replace")
    assert status == 0, text
    assert (data_dir / "hub.db").exists()
    # (5) The startup log names the broker and the database.
    assert f"broker: embedded amqtt at mqtt://127.0.0.1:{mqtt_port}" in text
    assert f"database: sqlite:///{data_dir.resolve()}/hub.db" in text
    assert f"http://127.0.0.1:{env_api_port}" in text
    assert "hub stopped" in text


# ---------------------------------------------------------------- (5) startup log


@pytest.mark.parametrize(
    ("broker", "kind"),
    [
        pytest.param("mosquitto", "sqlite", marks=NEEDS_MOSQUITTO),
        pytest.param("embedded", "postgresql", marks=NEEDS_PG),
    ],
)
def test_startup_log_names_broker_and_hides_database_password(
    tmp_path: Path, broker: str, kind: str
) -> None:
    password = "s3cret-Pa55word"
    with database(kind, tmp_path) as base_url:
        url = base_url
        if kind == "postgresql":
            url = make_url(url).set(password=password).render_as_string(hide_password=False)
        hub = HubProcess(data_dir=tmp_path / "hub", broker=broker, database_url=url)
        with running(hub):
            pass
    text = hub.log_path.read_text(errors="replace")
    if broker == "mosquitto":
        assert "broker: managed mosquitto" in text
        assert "embedded amqtt" not in text
    else:
        assert "broker: embedded amqtt" in text
    if kind == "postgresql":
        assert password not in text
        assert "database: postgresql+psycopg://postgres:***@" in text
    else:
        assert f"database: sqlite:///{tmp_path}/hub.db" in text


# ---------------------------------------------------------------- (6) restart


@pytest.mark.parametrize("kind", DATABASES)
def test_state_survives_a_restart(tmp_path: Path, kind: str) -> None:
    public_key = raw(new_key())
    with database(kind, tmp_path) as url:
        first = HubProcess(
            data_dir=tmp_path / "hub", database_url=None if kind == "sqlite" else url
        )
        with running(first):
            key = first.create_tenant("restart-tenant")
            with first.api(key) as api:
                cls = api.post(
                    "/device-classes",
                    json={
                        "name": "meter",
                        "vendor_id": "fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe",
                        "class_id": "1492af14-2569-5e48-bf42-9b2d51f2ab45",
                    },
                )
                assert cls.status_code == 201, cls.text
                device = api.post(
                    "/devices",
                    json={
                        "serial": "RS-0001",
                        "device_class_id": cls.json()["id"],
                        "tags": ["restart"],
                        "public_key": base64.b64encode(public_key).decode(),
                    },
                )
                assert device.status_code == 201, device.text
        keys_before = {p.name: p.read_bytes() for p in (first.data_dir / "keys").iterdir()}
        secret_before = (first.data_dir / "hub-mqtt.secret").read_bytes()

        second = HubProcess(
            data_dir=first.data_dir,
            database_url=first.database_url,
            mqtt_port=first.mqtt_port,
            api_port=first.api_port,
        )
        with running(second), second.api(key) as api:
            found = api.get(f"/devices/{device.json()['id']}")
            assert found.status_code == 200, found.text
            assert found.json()["serial"] == "RS-0001"
            assert found.json()["tags"] == ["restart"]
            assert base64.b64decode(found.json()["public_key"]) == public_key
            listed = api.get("/devices").json()
            assert listed["total"] == 1
            classes = api.get("/device-classes").json()
            assert [c["id"] for c in classes["items"]] == [cls.json()["id"]]
        # The hub reused its keys and MQTT secret instead of minting new ones.
        assert {p.name: p.read_bytes() for p in (first.data_dir / "keys").iterdir()} == keys_before
        assert (first.data_dir / "hub-mqtt.secret").read_bytes() == secret_before


# ---------------------------------------------------------------- (7) mosquitto-config


def test_mosquitto_config_writes_files_without_plaintext_secrets(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = clean_env(HUB_DATA_DIR=str(data_dir))
    upgraded = run_hub(["db", "upgrade"], env, tmp_path)
    assert upgraded.returncode == 0, upgraded.stderr

    url = f"sqlite:///{(data_dir / 'hub.db').resolve()}"
    engine = make_engine(url)
    try:
        fleet = Fleet.create(make_session_factory(engine), datetime.now(UTC).replace(microsecond=0))
        device_id, device_password = fleet.claimed_device("MC-0001")
        disabled_id, _ = fleet.claimed_device("MC-0002")
        fleet.set_status(disabled_id, "disabled")
        unclaimed_id = fleet.device("MC-0003")
    finally:
        engine.dispose()

    port, claim_port, claim_hub_port = free_port(), free_port(), free_port()
    out = tmp_path / "mosquitto"
    result = run_hub(
        [
            "mosquitto-config",
            "--out",
            str(out),
            "--port",
            str(port),
            "--claim-port",
            str(claim_port),
            "--claim-hub-port",
            str(claim_hub_port),
        ],
        env,
        tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    files = {p.name: p.read_text() for p in out.iterdir() if p.is_file()}
    assert "mosquitto.conf" in files
    configs = {name: text for name, text in files.items() if name.endswith(".conf")}
    listeners = {name: conf_values(text, "listener") for name, text in configs.items()}
    # The device broker listens on --port; some configuration serves claims on --claim-port.
    assert f"{port} 127.0.0.1" in listeners["mosquitto.conf"]
    assert any(f"{claim_port} 127.0.0.1" in found for found in listeners.values())
    conf = files["mosquitto.conf"]
    # The device listener comes first in mosquitto.conf.
    password_file = Path(conf_values(conf, "password_file")[0])
    acl_file = Path(conf_values(conf, "acl_file")[0])
    assert password_file.parent == out and acl_file.parent == out
    passwords = password_file.read_text()
    entries = dict(line.split(":", 1) for line in passwords.splitlines() if ":" in line)
    assert entries[device_id].startswith("$7$")
    assert entries["hub-main"].startswith("$7$")
    assert disabled_id not in passwords and unclaimed_id not in passwords
    assert "pattern write d/%u/up/+" in acl_file.read_text()
    assert "allow_anonymous false" in conf
    assert "message_size_limit" in conf and "max_queued_messages" in conf
    hub_secret = (data_dir / "hub-mqtt.secret").read_text().strip()
    for name, text in files.items():
        assert device_password not in text, name
        assert hub_secret not in text, name
    for path in out.iterdir():
        assert path.stat().st_mode & 0o077 == 0, f"{path.name} is readable by others"

    binary = mosquitto_binary()
    if binary is None:
        pytest.skip("no mosquitto binary to try the configuration with")
    with mosquitto(binary, [out / name for name in configs]):
        for found in listeners.values():
            for listener in found:
                wait_for_port(int(listener.split()[0]), timeout=10)
        assert login(port, device_id, device_password)
        assert not login(port, device_id, device_password + "x")
        assert login(claim_port, claim_client_id(), "anything")


def conf_values(text: str, key: str) -> list[str]:
    return [line.split(" ", 1)[1] for line in text.splitlines() if line.startswith(key + " ")]


def login(port: int, client_id: str, password: str) -> bool:
    client = TestClient(client_id, password=password)
    try:
        return client.connect(port)
    finally:
        client.close()


@contextmanager
def mosquitto(binary: str, configs: list[Path]) -> Iterator[None]:
    """Run one mosquitto per configuration; fail with its log if one exits.

    Started as root, Mosquitto drops to user ``mosquitto``, which cannot read the
    0600 files in the test's private directory (an operator would chown them for
    the service); the copy run here stays root instead. Nothing else changes.
    """
    processes: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        for original in configs:
            conf = original.with_name(original.stem + ".test-run.conf")
            conf.write_text(original.read_text() + ("user root\n" if os.geteuid() == 0 else ""))
            log = conf.with_name(original.stem + ".run.log")
            with log.open("wb") as out:
                process = subprocess.Popen(
                    [binary, "-c", str(conf)], stdin=subprocess.DEVNULL, stdout=out, stderr=out
                )
            processes.append((process, log))
        try:
            yield
        finally:
            for process, log in processes:
                assert process.poll() is None, f"mosquitto exited:\n{log.read_text()}"
    finally:
        for process, _ in processes:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
