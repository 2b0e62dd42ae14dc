"""The one port probe: fail early, and clearly, when a port the hub binds is taken.

Used by the embedded broker, the managed Mosquitto brokers and ``hub serve``
(REST API port). Binding ourselves first turns "address already in use" from a
broker's log line or a deep asyncio traceback into a :class:`PortInUse` naming
the port, what it is for and the option that changes it.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Sequence

from hub.errors import BrokerError, PortInUse

MQTT_WHAT = "MQTT"
"""``what`` for the device broker's port (embedded or managed)."""

MQTT_HINT = "--mqtt-port / HUB_MQTT_PORT"
"""``hint`` for the device broker's port."""

CLAIM_WHAT = "MQTT claim broker"
"""``what`` for the managed Mosquitto claim broker's (agents') port."""

CLAIM_HINT = "HUB_CLAIM_MQTT_PORT / claim_mqtt_port (default: the MQTT port + 1)"
"""``hint`` for the claim broker's port (``hub serve`` has no CLI option for it)."""

CLAIM_HUB_WHAT = "MQTT claim broker hub listener"
"""``what`` for the claim broker's hub-only listener."""

CLAIM_HUB_HINT = "hub_port (0 picks a free port; hub serve always does)"
"""``hint`` for the claim broker's hub-only listener."""


def port_in_use_error(host: str, port: int, what: str, hint: str) -> PortInUse:
    """Return the :class:`PortInUse` for a taken ``host:port``.

    Args:
        host: The address that could not be bound.
        port: The taken port.
        what: What the port is for, e.g. ``"MQTT"`` or ``"REST API"``.
        hint: The option(s) that change it, e.g. ``"--api-port / HUB_API_PORT"``.
    """
    return PortInUse(
        f"{what} port {port} on {host} is already in use by another process "
        f"(another broker or hub?): choose another with {hint}"
    )


def probe_ports(
    host: str,
    *ports: int,
    what: str | Sequence[str] = MQTT_WHAT,
    hint: str | Sequence[str] = MQTT_HINT,
) -> list[int]:
    """Bind every port at once, release them, and return the real port numbers.

    ``0`` picks a free port; because all ports are bound together, several
    zeros never yield the same port. ``SO_REUSEADDR`` is set, as asyncio's
    ``start_server`` and Mosquitto do, so a port in ``TIME_WAIT`` is not
    reported as taken.

    Args:
        host: Address to bind.
        ports: The ports to check.
        what: What the ports are for (for the error message): one text for
            all, or one per port.
        hint: How to choose another (for the error message): one text for
            all, or one per port.

    Raises:
        PortInUse: when a port is taken (the first one found).
        BrokerError: when a port cannot be bound for another reason.
    """
    with contextlib.ExitStack() as stack:
        found: list[int] = []
        for index, port in enumerate(ports):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    label, fix = _nth(what, index), _nth(hint, index)
                    raise port_in_use_error(host, port, label, fix) from exc
                label = _nth(what, index)
                raise BrokerError(f"cannot bind {label} port {host}:{port}: {exc}") from exc
            found.append(int(sock.getsockname()[1]))
        return found


def _nth(value: str | Sequence[str], index: int) -> str:
    return value if isinstance(value, str) else value[index]


def is_addr_in_use(exc: BaseException | None) -> bool:
    """Return whether ``exc`` or anything in its cause/context chain is EADDRINUSE."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


__all__ = [
    "CLAIM_HINT",
    "CLAIM_HUB_HINT",
    "CLAIM_HUB_WHAT",
    "CLAIM_WHAT",
    "MQTT_HINT",
    "MQTT_WHAT",
    "is_addr_in_use",
    "port_in_use_error",
    "probe_ports",
]
