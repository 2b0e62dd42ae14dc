"""The one port probe (hub.broker.ports) and its users' error messages."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from hub.broker.ports import (
    CLAIM_HINT,
    CLAIM_WHAT,
    port_in_use_error,
    probe_ports,
)
from hub.errors import PortInUse
from hub.serve import check_port_free

HOST = "127.0.0.1"


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind((HOST, 0))
        holder.listen()
        yield int(holder.getsockname()[1])


def test_zero_picks_distinct_free_ports() -> None:
    ports = probe_ports(HOST, 0, 0, 0)
    assert len(set(ports)) == 3
    assert all(port > 0 for port in ports)
    assert probe_ports(HOST, *ports) == ports  # released again: free to bind


def test_no_ports_is_nothing_to_do() -> None:
    assert probe_ports(HOST) == []


def test_taken_port_names_port_purpose_and_option(taken_port: int) -> None:
    with pytest.raises(PortInUse) as caught:
        probe_ports(HOST, 0, taken_port)
    message = str(caught.value)
    assert f"port {taken_port} on {HOST}" in message
    assert "in use" in message
    assert "--mqtt-port / HUB_MQTT_PORT" in message


def test_per_port_labels(taken_port: int) -> None:
    with pytest.raises(PortInUse, match=rf"^{CLAIM_WHAT} port {taken_port} .*HUB_CLAIM_MQTT_PORT"):
        probe_ports(HOST, taken_port, 0, what=(CLAIM_WHAT, "other"), hint=(CLAIM_HINT, "--other"))


def test_port_in_use_error() -> None:
    error = port_in_use_error(HOST, 8123, "REST API", "--api-port / HUB_API_PORT")
    assert isinstance(error, PortInUse)
    assert error.code == "port_in_use"
    assert str(error).startswith("REST API port 8123 on 127.0.0.1 is already in use")
    assert str(error).endswith("choose another with --api-port / HUB_API_PORT")


def test_serve_check_port_free_delegates(taken_port: int) -> None:
    check_port_free(HOST, 0, "REST API", "--api-port / HUB_API_PORT")
    with pytest.raises(PortInUse, match=rf"REST API port {taken_port} .*--api-port"):
        check_port_free(HOST, taken_port, "REST API", "--api-port / HUB_API_PORT")
