"""The hub and brokers a run drives, and the faults that can be done to them.

Three shapes:

- **embedded** (the default): ``hub serve`` on the embedded amqtt broker and
  SQLite (or ``--database-url``) in a temporary directory on free ports. The
  broker lives inside the hub process, so a *broker restart* is a graceful hub
  restart and a *broker stall* freezes the hub process (SIGSTOP).
- **mosquitto**: two Mosquitto processes (devices, claims) that the simulator
  runs itself from ``hub mosquitto-config``, and ``hub serve`` against them as
  an external broker (it keeps their password file in sync). A broker restart
  stops and restarts both; a stall freezes the device broker (SIGSTOP).
- **remote**: a hub someone else runs (``--hub-url``, ``--api-key``, MQTT
  addresses). Nothing can be killed there: process faults are skipped, and the
  report says so.

A hub SIGKILL keeps the data directory and ports, and starts ``hub serve``
again after the down time, as a supervisor would.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from simulator.processes import HubProcess, ProcessError, free_port
from simulator.scenario import HubOptions

HUB_MODULE = [sys.executable, "-m", "hub.cli.main"]


def mosquitto_binary() -> str | None:
    """The mosquitto binary to run (``$FLEET_SIM_MOSQUITTO``, PATH, /usr/sbin)."""
    import shutil  # noqa: PLC0415

    wanted = os.environ.get("FLEET_SIM_MOSQUITTO")
    if wanted:
        return wanted if Path(wanted).exists() else None
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )


@dataclass
class MosquittoPair:
    """The device broker and the claim broker, as ``hub mosquitto-config`` writes them."""

    directory: Path
    binary: str
    port: int = field(default_factory=free_port)
    claim_port: int = field(default_factory=free_port)
    claim_hub_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def pid_file(self) -> Path:
        """The device broker's pid file (the hub signals it after credential changes)."""
        return self.directory / "mosquitto.pid"

    @property
    def password_file(self) -> Path:
        """The device broker's password file (the hub keeps it in sync)."""
        conf = (self.directory / "mosquitto.conf").read_text()
        line = next(x for x in conf.splitlines() if x.startswith("password_file "))
        return Path(line.split(" ", 1)[1])

    def configure(self, env: dict[str, str]) -> None:
        """Migrate the database and write both configurations.

        Raises:
            ProcessError: a ``hub`` command failed.
        """
        for args in (
            ["db", "upgrade"],
            [
                "mosquitto-config",
                "--out",
                str(self.directory),
                "--port",
                str(self.port),
                "--claim-port",
                str(self.claim_port),
                "--claim-hub-port",
                str(self.claim_hub_port),
            ],
        ):
            done = subprocess.run(  # noqa: S603 - our own interpreter and module
                [*HUB_MODULE, *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            if done.returncode != 0:
                raise ProcessError(f"hub {args[0]} failed: {done.stdout}{done.stderr}")
        extra = {"mosquitto.conf": f"pid_file {self.pid_file}\n", "claim-mosquitto.conf": ""}
        for name, lines in extra.items():
            conf = self.directory / name
            root = "user root\n" if os.geteuid() == 0 else ""
            conf.write_text(conf.read_text() + lines + root)

    def start(self) -> None:
        """Start both brokers and wait until they listen."""
        for name in ("mosquitto.conf", "claim-mosquitto.conf"):
            log = (self.directory / f"{name}.log").open("ab")
            self.processes[name] = subprocess.Popen(  # noqa: S603 - configured binary
                [self.binary, "-c", str(self.directory / name)], stdout=log, stderr=log
            )
        for port in (self.port, self.claim_port, self.claim_hub_port):
            _wait_for_port(port)

    def stop(self) -> None:
        """SIGTERM both brokers and wait."""
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.processes.clear()

    def signal_devices(self, signum: int) -> None:
        """Send a signal to the device broker (SIGSTOP/SIGCONT for stalls)."""
        process = self.processes.get("mosquitto.conf")
        if process is not None and process.poll() is None:
            process.send_signal(signum)


def _wait_for_port(port: int, timeout: float = 20.0) -> None:
    import socket  # noqa: PLC0415
    import time  # noqa: PLC0415

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise ProcessError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@dataclass
class Environment:
    """Where the fleet connects, and the handles faults need."""

    kind: str
    api_url: str
    api_key: str
    host: str
    port: int
    claim_host: str
    claim_port: int
    hub: HubProcess | None = None
    brokers: MosquittoPair | None = None
    max_payload_bytes: int = 64 * 1024

    def unsupported(self, fault: str) -> str | None:
        """Why ``fault`` cannot be injected here, or ``None`` when it can."""
        if fault in ("hub_kill", "broker_restart", "broker_stall") and self.hub is None:
            return "the hub is not run by the simulator (remote hub)"
        return None

    async def hub_kill(self, down_seconds: float) -> None:
        """SIGKILL ``hub serve``, wait, start it again on the same data and ports."""
        assert self.hub is not None
        await asyncio.to_thread(self.hub.kill)
        await asyncio.sleep(down_seconds)
        await asyncio.to_thread(self.hub.start)

    async def broker_restart(self, down_seconds: float) -> str | None:
        """Restart the broker(s); on the embedded broker, that is a hub restart.

        Returns:
            ``None``, or what went wrong on the way down: a hub that ignores
            SIGTERM is killed after :meth:`HubProcess.stop`'s time-out and
            started again all the same (as a supervisor would), and the run
            reports it instead of dying with it.
        """
        if self.brokers is not None:
            await asyncio.to_thread(self.brokers.stop)
            await asyncio.sleep(down_seconds)
            await asyncio.to_thread(self.brokers.start)
            return None
        assert self.hub is not None
        problem = None
        try:
            await asyncio.to_thread(self.hub.stop)
        except ProcessError as exc:
            problem = str(exc).splitlines()[0].rstrip(":") + ": killed after the time-out"
        await asyncio.sleep(down_seconds)
        await asyncio.to_thread(self.hub.start)
        return problem

    async def broker_stall(self, down_seconds: float) -> None:
        """Freeze the device broker (embedded: the hub process) for ``down_seconds``."""
        if self.brokers is not None:
            self.brokers.signal_devices(signal.SIGSTOP)
            try:
                await asyncio.sleep(down_seconds)
            finally:
                self.brokers.signal_devices(signal.SIGCONT)
            return
        assert self.hub is not None and self.hub.process is not None
        self.hub.process.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(down_seconds)
        finally:
            self.hub.process.send_signal(signal.SIGCONT)

    def stop(self) -> int:
        """Stop what the simulator started; returns the hub's exit status."""
        status = 0
        if self.hub is not None:
            if self.hub.process is not None and self.hub.process.poll() is None:
                self.hub.process.send_signal(signal.SIGCONT)
            status = self.hub.stop()
        if self.brokers is not None:
            self.brokers.stop()
        return status


def hub_env(options: HubOptions) -> dict[str, str]:
    """``HUB_*`` settings a scenario asks for."""
    env = {
        "HUB_MANIFEST_LEASE_SECONDS": str(options.manifest_lease_seconds),
        "HUB_MANIFEST_RENEW_BEFORE_SECONDS": str(options.manifest_renew_before_seconds),
        "HUB_PRESENCE_STALE_SECONDS": str(options.presence_stale_seconds),
        "HUB_LOG_LEVEL": os.environ.get("FLEET_SIM_HUB_LOG_LEVEL", "WARNING"),
    }
    if options.billing_grace_seconds is not None:
        env["HUB_BILLING_GRACE_SECONDS"] = str(options.billing_grace_seconds)
    if options.billing_job_seconds is not None:
        env["HUB_BILLING_JOB_SECONDS"] = str(options.billing_job_seconds)
    return env


def tenant_name() -> str:
    """A tenant name of its own per run.

    Tenant names are unique per hub, and a database may outlive a run (an
    external PostgreSQL, a run retried on the same database): a fixed name
    would make the second run fail before it started.
    """
    return f"Fleet Simulator {secrets.token_hex(4)}"


def start(
    *, broker: str, data_dir: Path, options: HubOptions, database_url: str | None = None
) -> Environment:
    """Start a hub (and Mosquitto when ``broker`` is ``mosquitto``) and bootstrap a tenant.

    Raises:
        ProcessError: something did not start.
    """
    if broker == "mosquitto":
        return _start_with_mosquitto(data_dir, options, database_url)
    if broker != "embedded":
        raise ProcessError(f"unknown broker {broker!r}: embedded or mosquitto")
    hub = HubProcess(
        data_dir=data_dir / "hub", database_url=database_url, extra_env=hub_env(options)
    )
    hub.start()
    try:
        key = hub.create_tenant(tenant_name())
    except ProcessError:
        hub.stop()
        raise
    return Environment(
        kind="embedded",
        api_url=hub.api_url,
        api_key=key,
        host="127.0.0.1",
        port=hub.mqtt_port,
        claim_host="127.0.0.1",
        claim_port=hub.claim_port,
        hub=hub,
    )


def _start_with_mosquitto(
    data_dir: Path, options: HubOptions, database_url: str | None
) -> Environment:
    binary = mosquitto_binary()
    if binary is None:
        raise ProcessError("--broker mosquitto needs a mosquitto binary (FLEET_SIM_MOSQUITTO)")
    hub_dir = data_dir / "hub"
    brokers = MosquittoPair(directory=data_dir / "mosquitto", binary=binary)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    env["HUB_DATA_DIR"] = str(hub_dir)
    if database_url:
        env["HUB_DATABASE_URL"] = database_url
    brokers.configure(env)
    brokers.start()
    extra = hub_env(options) | {
        "HUB_MQTT_URL": f"mqtt://127.0.0.1:{brokers.port}",
        "HUB_CLAIM_MQTT_URL": f"mqtt://127.0.0.1:{brokers.claim_hub_port}",
        "HUB_MOSQUITTO_PASSWORD_FILE": str(brokers.password_file),
        "HUB_MOSQUITTO_PID_FILE": str(brokers.pid_file),
    }
    hub = HubProcess(
        data_dir=hub_dir, broker="external", database_url=database_url, extra_env=extra
    )
    try:
        hub.start()
        key = hub.create_tenant(tenant_name())
    except ProcessError:
        hub.stop()
        brokers.stop()
        raise
    return Environment(
        kind="mosquitto",
        api_url=hub.api_url,
        api_key=key,
        host="127.0.0.1",
        port=brokers.port,
        claim_host="127.0.0.1",
        claim_port=brokers.claim_port,
        hub=hub,
        brokers=brokers,
    )
