"""The embedded MQTT broker: amqtt 0.12 on 127.0.0.1, inside the hub's event loop.

amqtt is convenient (no service to install) but weak; see ``docs/brokers.md``.
Besides the hub's plugins (:mod:`hub.broker.amqtt_plugins`), this module runs a
small subclass of amqtt's ``Broker`` that closes the gaps no plugin hook can:

* **Login before session handling.** amqtt 0.12 reads CONNECT and then, *before*
  calling any auth plugin, deletes the stored session of that client id
  (clean session) or overwrites its credentials and later takes over its live
  connection (persistent session). A refused login using a device's client id
  therefore knocked the device off. Here the plugins run first; a refused
  CONNECT gets CONNACK 5 and never reaches amqtt's session table.
* **Will messages.** amqtt publishes a will without any topic check. A will is
  accepted only on a topic the principal may publish to, within the size cap.
* **Size caps.** amqtt has no message-size limit and buffers whatever remaining
  length a client announces (up to 256 MB). A reader wrapper closes the
  connection as soon as a packet header announces more than
  ``max_payload_bytes + PACKET_HEADROOM``; a PUBLISH whose payload exceeds
  ``max_payload_bytes`` but fits that bound is dropped and logged (as
  Mosquitto's ``message_size_limit`` / ``max_packet_size`` do).
* **Takeover.** A clean-session reconnect left the old connection running
  detached (it could still publish); it is now closed, as MQTT-3.1.4-2 requires.
* **No retained messages.** amqtt stores every retained PUBLISH and replays it
  on each later matching subscription. A retained PUBLISH is dropped and logged
  (QoS 1 is acknowledged), a CONNECT with a retained will is refused; nobody
  retains (the hub never does), as with Mosquitto's ``retain_available false``.
* **Subscription table under churn.** amqtt walks its subscription table (and
  each filter's subscriber list) with ``await`` inside the loop, when it
  broadcasts a message and when a client connects, while other connections add
  and remove subscriptions: ``RuntimeError: dictionary changed size during
  iteration`` abandoned the broadcast part-way (subscribers not yet served never
  got the message). The table here iterates over a snapshot of itself.
* **Kick.** :meth:`EmbeddedBroker.disconnect_client` closes a client's
  connection and drops its session and principal at once (a disabled or reset
  device); its next CONNECT is authenticated afresh.

These overrides use private amqtt 0.12 methods; :meth:`EmbeddedBroker.start`
refuses other amqtt minor versions rather than run unguarded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from importlib.metadata import version
from typing import Any

from amqtt.adapters import ReaderAdapter, StreamReaderAdapter, StreamWriterAdapter
from amqtt.broker import Broker
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.mqtt.connack import NOT_AUTHORIZED, ConnackPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler

from hub.broker import acl
from hub.broker.amqtt_plugins import PRINCIPAL_ATTRIBUTE, plugin_config, principal_of
from hub.broker.ports import (
    MQTT_HINT,
    MQTT_WHAT,
    is_addr_in_use,
    port_in_use_error,
    probe_ports,
)
from hub.broker.principals import CredentialVerifier
from hub.errors import BrokerError

logger = logging.getLogger(__name__)

PACKET_HEADROOM = 8192
"""Bytes allowed on top of the payload cap for topic, ids, credentials, headers."""

SUPPORTED_AMQTT = ("0.12.",)
_PREAUTHENTICATED = "hub.preauthenticated"


class PacketTooLarge(AMQTTError):  # type: ignore[misc]  # amqtt is untyped
    """A client announced a packet larger than the broker accepts."""


class _PacketSizeGuard(ReaderAdapter):  # type: ignore[misc]  # amqtt is untyped
    """Tracks MQTT packet boundaries in the byte stream and refuses big packets.

    amqtt's decoders read the fixed header one byte at a time and then exactly
    the announced body, so the guard sees the remaining length *before* the
    body is requested and can raise instead of letting amqtt buffer it.
    Raising a non-MQTT error makes amqtt's reader loop close the connection
    (an ``MQTTError`` would only discard the packet and desynchronise).
    """

    def __init__(self, inner: ReaderAdapter, limit: int, peer: object) -> None:
        self._inner = inner
        self._limit = limit
        self._peer = peer
        self._body_left = 0
        self._in_length = False  # inside the variable-length "remaining length"
        self._length = 0
        self._multiplier = 1

    async def read(self, n: int = -1) -> bytes:
        data: bytes = await self._inner.read(n)
        view = memoryview(data)
        while view:
            if self._body_left:
                step = min(self._body_left, len(view))
                self._body_left -= step
                view = view[step:]
                continue
            self._header_byte(view[0])
            view = view[1:]
        return data

    def _header_byte(self, byte: int) -> None:
        if not self._in_length:  # packet type and flags
            self._in_length, self._length, self._multiplier = True, 0, 1
            return
        self._length += (byte & 0x7F) * self._multiplier
        self._multiplier *= 128
        if byte & 0x80:
            return
        self._in_length = False
        if self._length > self._limit:
            logger.warning(
                "closing connection from %s: packet of %d bytes exceeds %d",
                self._peer,
                self._length,
                self._limit,
            )
            raise PacketTooLarge(f"packet of {self._length} bytes exceeds {self._limit}")
        self._body_left = self._length

    def feed_eof(self) -> None:
        self._inner.feed_eof()


class _SnapshotList(list[Any]):
    """One filter's subscribers; iterating walks a copy, so a concurrent change skips no one."""

    def __iter__(self) -> Iterator[Any]:
        return iter(self.copy())


class _SubscriptionTable(dict[str, _SnapshotList]):
    """amqtt's ``topic filter -> subscribers`` table, safe to change while it is walked.

    amqtt awaits inside its loops over this table (module docstring); iterating
    over a snapshot of the keys, and keeping each subscriber list a
    :class:`_SnapshotList`, lets subscribes and unsubscribes land meanwhile. A
    broadcast serves the subscribers present when it reached their filter: one
    that unsubscribes meanwhile may still get that message (as in flight).
    """

    def __iter__(self) -> Iterator[str]:
        return iter(list(super().keys()))

    def items(self) -> Any:  # a list, not a live view
        return list(super().items())

    def __setitem__(self, key: str, value: list[Any]) -> None:
        super().__setitem__(
            key, value if isinstance(value, _SnapshotList) else _SnapshotList(value)
        )

    def setdefault(self, key: str, default: list[Any] | None = None) -> _SnapshotList:
        if key not in self:
            self[key] = [] if default is None else default
        return self[key]

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value


class _GuardedBroker(Broker):  # type: ignore[misc]  # amqtt is untyped
    """amqtt's ``Broker`` with authentication first and size caps (module docstring)."""

    def __init__(self, config: dict[str, Any], *, max_payload_bytes: int) -> None:
        super().__init__(config)
        self._max_payload = max_payload_bytes
        self._subscriptions: _SubscriptionTable = _SubscriptionTable()  # amqtt's starts empty

    async def stream_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
    ) -> None:
        guard = _PacketSizeGuard(
            StreamReaderAdapter(reader),
            self._max_payload + PACKET_HEADROOM,
            writer.get_extra_info("peername"),
        )
        await self._client_connected(listener_name, guard, StreamWriterAdapter(writer))

    async def _initialize_client_session(
        self, reader: Any, writer: Any, remote_address: str, remote_port: int
    ) -> tuple[Any, Any]:
        try:
            handler, session = await BrokerProtocolHandler.init_from_connect(
                reader, writer, self.plugins_manager
            )
        except (AMQTTError, MQTTError, NoDataError) as exc:
            await writer.close()  # amqtt leaves this socket open
            raise AMQTTError(f"bad CONNECT from {remote_address}:{remote_port}: {exc}") from exc
        if not await self._connect_allowed(session):
            await ConnackPacket.build(0, NOT_AUTHORIZED).to_stream(writer)
            await writer.close()
            raise MQTTError("login refused")  # amqtt logs it and releases the connection
        return handler, await self._adopt_session(session)

    async def _connect_allowed(self, session: Any) -> bool:
        """Run the auth plugins, then check the will, before any session is touched."""
        if not await super()._authenticate(session, None):
            return False
        principal = principal_of(session)
        if principal is None:
            return False
        if session.will_flag:
            topic, message = session.will_topic, session.will_message or b""
            if not acl.may_publish(principal, topic) or len(message) > self._max_payload:
                logger.info("login refused: will on %r by %s", str(topic)[:300], principal.username)
                return False
            if session.will_retain:  # see _handle_message_delivery
                logger.warning(
                    "login refused: retained will on %r by %s (retain is not accepted)",
                    str(topic)[:300],
                    principal.username,
                )
                return False
        return True

    async def _adopt_session(self, session: Any) -> Any:
        """Run amqtt's session lookup, but only for an authenticated CONNECT."""
        client_id = session.client_id
        existing = self._sessions.get(client_id)
        if session.clean_session:
            if existing is not None and existing[0].transitions.is_connected():
                # [MQTT-3.1.4-2] close the old connection instead of leaving it detached
                await existing[1].handle_connection_closed()
                await existing[1].stop()
            await self._delete_session(client_id)
            session.parent = 0
        elif existing is not None:
            old = existing[0]
            for name in ("will_flag", "will_message", "will_topic", "will_qos", "will_retain"):
                setattr(old, name, getattr(session, name))
            old.keep_alive, old.username, old.password = (
                session.keep_alive,
                session.username,
                session.password,
            )
            old.attributes[PRINCIPAL_ATTRIBUTE] = session.attributes[PRINCIPAL_ATTRIBUTE]
            session, session.parent = old, 1
        else:
            session.parent = 0
        delay = self.config.get("timeout-disconnect-delay", 0)
        if session.keep_alive > 0 and isinstance(delay, int):
            session.keep_alive += delay
        session.attributes[_PREAUTHENTICATED] = True
        return session

    async def _authenticate(self, session: Any, listener: Any) -> bool:
        # amqtt calls this after _initialize_client_session: the decision is already made.
        return bool(session.attributes.pop(_PREAUTHENTICATED, False))

    async def _handle_message_delivery(
        self, client_session: Any, handler: Any, wait_deliver: asyncio.Future[Any]
    ) -> bool:
        message = wait_deliver.result()
        data = getattr(message, "data", None)
        if data is not None and len(data) > self._max_payload:
            logger.warning(
                "dropped PUBLISH of %d bytes (cap %d) on %r from %s",
                len(data),
                self._max_payload,
                str(message.topic)[:300],
                client_session.client_id,
            )
            return True
        if _retain_flag(message):
            # Nobody may store retained messages: a device or claim session could
            # plant any number (each up to the cap) to be replayed on every later
            # subscription; the hub never retains (protocol §1). Mosquitto's
            # retain_available false is global too. QoS 1 is already acknowledged.
            logger.warning(
                "dropped retained PUBLISH on %r from %s: retained messages are not accepted",
                str(getattr(message, "topic", ""))[:300],
                client_session.client_id,
            )
            return True
        result: bool = await super()._handle_message_delivery(client_session, handler, wait_deliver)
        return result

    async def kick(self, client_id: str) -> bool:
        """Close ``client_id``'s connection, forget its principal and its session.

        Returns whether the client was connected. Its last will is not
        published (it was thrown out, it did not fail), messages it already
        sent but not yet routed are denied (no principal), and its next CONNECT
        authenticates from scratch and gets a fresh session and principal.
        """
        entry = self._sessions.get(client_id)
        if entry is None:
            return False
        session, handler = entry
        connected = bool(session.transitions.is_connected())
        session.attributes.pop(PRINCIPAL_ATTRIBUTE, None)
        session.will_flag = False
        if connected and handler is not None:
            await handler.handle_connection_closed()  # ends amqtt's client loop
            await handler.stop()  # closes the socket
        if self._sessions.get(client_id, (None, None))[0] is session:
            await self._delete_session(client_id)  # subscriptions and queues too
        logger.info("kicked %s (connected: %s)", client_id[:80], connected)
        return connected


class EmbeddedBroker:
    """amqtt broker for development and small fleets, bound to loopback TCP only.

    Runs in the caller's running event loop (the hub runs uvicorn in the same
    loop). Loads only the hub's auth and topic plugins.

    Args:
        host: Address to bind, normally ``127.0.0.1``.
        port: TCP port; ``0`` picks a free one (read it back from :attr:`port`).
        verifier: Turns logins into principals.
        max_payload_bytes: Largest PUBLISH payload forwarded.
    """

    def __init__(
        self, *, host: str, port: int, verifier: CredentialVerifier, max_payload_bytes: int
    ) -> None:
        if max_payload_bytes <= 0:
            raise ValueError("max_payload_bytes must be positive")
        self._host = host
        self._requested_port = port
        self._port = port
        self._verifier = verifier
        self._max_payload = max_payload_bytes
        self._broker: _GuardedBroker | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one once started, even if ``0`` was asked)."""
        return self._port

    async def start(self) -> None:
        """Bind and start serving.

        Raises:
            PortInUse: when the port is already taken.
            BrokerError: when amqtt is an unsupported version or fails to start.
        """
        if self._broker is not None:
            raise BrokerError("embedded broker already started")
        _check_amqtt_version()
        (port,) = probe_ports(self._host, self._requested_port)
        broker = _GuardedBroker(self._config(port), max_payload_bytes=self._max_payload)
        try:
            await broker.start()
        except Exception as exc:
            if is_addr_in_use(exc):
                raise port_in_use_error(self._host, port, MQTT_WHAT, MQTT_HINT) from exc
            raise BrokerError(f"embedded MQTT broker failed to start: {exc}") from exc
        self._broker = broker
        self._port = _bound_port(broker, port)
        logger.info(
            "embedded amqtt %s broker listening on %s:%d", version("amqtt"), self._host, self._port
        )

    async def disconnect_client(self, client_id: str) -> bool:
        """Throw ``client_id`` out now, e.g. a device that was disabled or reset.

        Closes its connection (no last will is published), drops its session
        and subscriptions and forgets its principal; a later CONNECT goes
        through the :class:`CredentialVerifier` again, so a device the
        verifier now refuses stays out.

        Returns:
            Whether the client was connected. ``False`` also when the broker
            is not running.
        """
        broker = self._broker
        if broker is None:
            return False
        return await broker.kick(client_id)

    async def stop(self) -> None:
        """Disconnect every client and close the listener; idempotent."""
        broker, self._broker = self._broker, None
        if broker is not None:
            await broker.shutdown()

    def _config(self, port: int) -> dict[str, Any]:
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{self._host}:{port}"}},
            "plugins": plugin_config(self._verifier),
        }


def _retain_flag(message: Any) -> bool:
    packet = getattr(message, "publish_packet", None)
    return bool(getattr(message, "retain", False) or getattr(packet, "retain_flag", False))


def _check_amqtt_version() -> None:
    found = version("amqtt")
    if not found.startswith(SUPPORTED_AMQTT):
        raise BrokerError(
            f"amqtt {found} is not supported: the hub's guards target amqtt 0.12.x "
            "private APIs; pin amqtt 0.12 or use the Mosquitto backend"
        )


def _bound_port(broker: _GuardedBroker, fallback: int) -> int:
    for server in broker._servers.values():
        sockets = getattr(server.instance, "sockets", None) or ()
        for sock in sockets:
            return int(sock.getsockname()[1])
    return fallback
