"""Real hub and agent processes on free loopback ports, for the demo and e2e tests.

Everything here talks to the hub the way an operator would: the ``hub`` and
``device-agent`` commands as child processes, the REST API over HTTP.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

_ADMIN_KEY = re.compile(r"hubk_[A-Za-z0-9]+_[A-Za-z0-9_-]+")


class ProcessError(RuntimeError):
    """A child process failed to start, answer or stop as expected."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _tool(name: str) -> list[str]:
    """Run our console scripts through this interpreter, whatever the PATH says."""
    modules = {"hub": "hub.cli.main", "device-agent": "device_agent.cli"}
    return [sys.executable, "-m", modules[name]]


@dataclass
class HubProcess:
    """``hub serve`` as a child process with its own data directory and ports."""

    data_dir: Path
    broker: str = "embedded"
    database_url: str | None = None
    mqtt_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    mosquitto_claim_port: int = field(default_factory=free_port)
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def claim_port(self) -> int:
        """Where agents claim: with Mosquitto, a separate claim broker process."""
        return self.mosquitto_claim_port if self.broker == "mosquitto" else self.mqtt_port

    @property
    def api_url(self) -> str:
        """Base URL of the REST API."""
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def log_path(self) -> Path:
        """Where the hub's output goes."""
        return self.data_dir / "hub.log"

    def env(self) -> dict[str, str]:
        """The environment the hub runs with."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
        env.update(
            HUB_DATA_DIR=str(self.data_dir),
            HUB_BROKER=self.broker,
            HUB_MQTT_PORT=str(self.mqtt_port),
            HUB_CLAIM_MQTT_PORT=str(self.claim_port),
            HUB_API_PORT=str(self.api_port),
            HUB_PRESENCE_STALE_SECONDS="30",
        )
        if self.database_url:
            env["HUB_DATABASE_URL"] = self.database_url
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 60.0) -> None:
        """Start ``hub serve`` and wait until its REST API answers."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [*_tool("hub"), "serve"], env=self.env(), stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ProcessError(f"hub exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.api_url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise ProcessError(f"hub did not come up in {timeout}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM the hub and wait; returns its exit status."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise ProcessError(f"hub ignored SIGTERM:\n{self.log_tail()}") from None

    def kill(self) -> None:
        """SIGKILL the hub: no shutdown at all, as a crash or an OOM kill would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    @property
    def running(self) -> bool:
        """Whether the hub process is alive."""
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The last lines the hub printed."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def create_tenant(self, name: str) -> str:
        """Bootstrap a tenant with ``hub tenant create``; returns its admin API key."""
        result = subprocess.run(  # noqa: S603 - our own interpreter and module
            [*_tool("hub"), "tenant", "create", name],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        match = _ADMIN_KEY.search(result.stdout)
        if result.returncode != 0 or match is None:
            raise ProcessError(f"tenant create failed: {result.stdout}\n{result.stderr}")
        return match.group(0)

    def api(self, key: str) -> httpx.Client:
        """An HTTP client for the REST API authenticated with ``key``."""
        return httpx.Client(
            base_url=f"{self.api_url}/api/v1",
            headers={"Authorization": f"Bearer {key}"},
            timeout=30.0,
        )


@dataclass
class AgentProcess:
    """``device-agent run`` as a child process with its own config and state."""

    directory: Path
    serial: str
    host: str
    port: int
    claim_port: int
    token: str | None = None
    key_file: Path | None = None
    heartbeat_seconds: float = 5.0
    seat_products: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    def write_config(self) -> Path:
        """Write ``agent.toml`` for this device."""
        self.directory.mkdir(parents=True, exist_ok=True)
        claim = f'token = "{self.token}"' if self.token else f'key_file = "{self.key_file}"'
        text = (
            f'[device]\nserial = "{self.serial}"\nstate_dir = "state"\n\n'
            f"[claim]\n{claim}\n\n"
            f'[broker]\nhost = "{self.host}"\nport = {self.port}\nclaim_port = {self.claim_port}\n'
            f"keepalive = 10\n\n"
            f"[agent]\nheartbeat_seconds = {self.heartbeat_seconds}\n"
            f"reconnect_min_seconds = 0.2\nreconnect_max_seconds = 3\n"
        )
        if self.seat_products:
            products = ", ".join(f'"{p}"' for p in self.seat_products)
            text += f"\n[seats]\nproducts = [{products}]\n"
        path = self.directory / "agent.toml"
        path.write_text(text)
        return path

    def start(self) -> None:
        """Start the agent process."""
        config = self.write_config()
        log = (self.directory / "agent.log").open("ab")
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [*_tool("device-agent"), "run", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM the agent (it publishes a clean offline status) and wait."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def kill(self) -> None:
        """SIGKILL: the broker then publishes the agent's last will."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def features(self, now: int | None = None) -> dict[str, Any]:
        """What the agent's own trust store enables (``device-agent features``)."""
        args = [*_tool("device-agent"), "features", "--config", str(self.directory / "agent.toml")]
        if now is not None:
            args += ["--now", str(now)]
        done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)  # noqa: S603
        if done.returncode != 0:
            raise ProcessError(f"device-agent features failed: {done.stderr}")
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def log_text(self) -> str:
        """Everything the agent printed."""
        path = self.directory / "agent.log"
        return path.read_text(errors="replace") if path.exists() else ""


def wait_until(
    predicate: Any, timeout: float, interval: float = 0.2, what: str = "condition"
) -> Any:
    """Poll ``predicate`` until it returns something truthy; returns that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise ProcessError(f"timed out after {timeout}s waiting for {what}")
