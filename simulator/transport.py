"""One MQTT connection of a simulated device, on the shared asyncio loop (aiomqtt).

aiomqtt drives paho's client from the event loop (socket readers and writers,
no network thread), so thousands of connections share one loop and one thread;
only the blocking TCP connect runs in the loop's small default executor.

:meth:`AsyncTransport.crash` ends a connection the way a dying process or a cut
cable does: the socket is shut down without an MQTT DISCONNECT, so the broker
publishes the device's last will.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator

import aiomqtt
import paho.mqtt.client as paho

from device_agent.errors import NotAuthorized, TransportError
from device_agent.outgoing import Outgoing
from device_agent.transport import Incoming

log = logging.getLogger(__name__)

_AUTH_REFUSALS = frozenset({4, 5, 134, 135})
# paho (through aiomqtt) logs every reset connection; faults make thousands of them.
logging.getLogger("mqtt").setLevel(logging.CRITICAL)


def _guard_writer(client: aiomqtt.Client) -> None:
    """Register paho's socket writer only while the socket is still the client's own.

    aiomqtt 2.5 defers ``add_writer(sock.fileno(), ...)`` with
    ``call_soon_threadsafe``; when the connection is closed before that runs,
    the stale file descriptor is either gone (an EBADF traceback in the log)
    or, worse, already reused by another device's new connection, whose writer
    it would replace. The replacement checks, when it runs, that the socket is
    still the client's and still open. It is set through paho's public
    ``on_socket_register_write`` callback.
    """
    loop = asyncio.get_running_loop()
    paho_client = client._client

    def register(mqttc: paho.Client, _userdata: object, sock: object) -> None:
        def add() -> None:
            if mqttc.socket() is not sock or not isinstance(sock, socket.socket):
                return
            fileno = sock.fileno()
            if fileno < 0:
                return

            def writable() -> None:
                try:
                    mqttc.loop_write()
                except Exception:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

            loop.add_writer(fileno, writable)

        loop.call_soon_threadsafe(add)

    paho_client.on_socket_register_write = register


class AsyncTransport:
    """An MQTT 3.1.1 client for one device session (clean session, QoS 1)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        client_id: str,
        username: str,
        password: str,
        will: Outgoing | None,
        keepalive: int,
        bind_address: str = "",
        timeout: float = 15.0,
    ) -> None:
        aio_will = (
            aiomqtt.Will(will.topic, will.payload, qos=will.qos, retain=False) if will else None
        )
        self._client = aiomqtt.Client(
            host,
            port,
            identifier=client_id,
            username=username,
            password=password,
            will=aio_will,
            keepalive=keepalive,
            clean_session=True,
            bind_address=bind_address,
            timeout=timeout,
            protocol=aiomqtt.ProtocolVersion.V311,
        )
        _guard_writer(self._client)
        self._open = False

    @property
    def is_open(self) -> bool:
        """Connected and not yet closed or crashed."""
        return self._open

    async def connect(self) -> None:
        """Connect and wait for CONNACK.

        Raises:
            NotAuthorized: the broker refused the login.
            TransportError: the broker is unreachable or refused otherwise.
        """
        try:
            await self._client.__aenter__()
        except aiomqtt.MqttCodeError as exc:
            code = _code(exc.rc)
            if code in _AUTH_REFUSALS:
                raise NotAuthorized(f"broker refused the login (code {code})") from exc
            raise TransportError(f"broker refused the connection: {exc}") from exc
        except aiomqtt.MqttError as exc:
            raise TransportError(f"cannot connect: {exc}") from exc
        self._open = True

    async def subscribe(self, topic_filter: str) -> bool:
        """Subscribe at QoS 1; returns whether the broker granted it.

        Raises:
            TransportError: the connection failed meanwhile.
        """
        try:
            granted = await self._client.subscribe(topic_filter, qos=1)
        except aiomqtt.MqttError as exc:
            raise TransportError(f"subscribe failed: {exc}") from exc
        codes = [_code(code) for code in granted]
        return bool(codes) and all(c < 0x80 for c in codes)

    async def publish(self, message: Outgoing) -> None:
        """Publish and, at QoS 1, wait for the broker's PUBACK.

        Raises:
            TransportError: not connected, or no acknowledgement in time.
        """
        try:
            await self._client.publish(message.topic, message.payload, qos=message.qos)
        except aiomqtt.MqttError as exc:
            raise TransportError(f"publish to {message.topic} failed: {exc}") from exc

    async def messages(self) -> AsyncIterator[Incoming]:
        """The received messages until the connection ends.

        Raises:
            TransportError: when the connection is lost.
        """
        try:
            async for message in self._client.messages:
                payload = message.payload
                data = payload if isinstance(payload, bytes) else str(payload or "").encode()
                yield Incoming(str(message.topic), data)
        except aiomqtt.MqttError as exc:
            self._open = False
            raise TransportError(f"connection lost: {exc}") from exc

    async def close(self) -> None:
        """A clean DISCONNECT (no last will)."""
        if not self._open:
            return
        self._open = False
        with contextlib.suppress(aiomqtt.MqttError, OSError, asyncio.TimeoutError):
            await asyncio.wait_for(self._client.__aexit__(None, None, None), 5)

    def crash(self) -> None:
        """Drop the connection without DISCONNECT: the broker sends the last will."""
        self._open = False
        sock = self._client._client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _code(value: object) -> int:
    """An MQTT result code as an int (paho gives ints or ``ReasonCode`` objects)."""
    if isinstance(value, int):
        return value
    number = getattr(value, "value", None)
    return int(number) if isinstance(number, int) else -1
