"""The agent's seam to MQTT: a small blocking :class:`Transport` protocol.

The real agent uses :class:`PahoTransport`; tests and the fleet simulator can
supply their own. The runner owns reconnect policy, so a transport never
reconnects by itself: once ``is_connected`` turns false it is discarded.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from device_agent.errors import NotAuthorized, TransportError
from device_agent.outgoing import Outgoing

_CONNECT_TIMEOUT = 10.0
_ACK_TIMEOUT = 10.0
# CONNACK return codes 4 and 5 (MQTT 3.1.1): bad credentials / not authorized.
_AUTH_REFUSALS = frozenset({4, 5, 134, 135})


@dataclass(frozen=True, slots=True)
class Incoming:
    """One received MQTT message."""

    topic: str
    payload: bytes


class Transport(Protocol):
    """What the runner needs from an MQTT client."""

    def connect(
        self,
        *,
        host: str,
        port: int,
        client_id: str,
        username: str,
        password: str,
        will: Outgoing | None,
        keepalive: int,
    ) -> None:
        """Connect and wait for CONNACK; raise NotAuthorized or TransportError."""
        ...

    def subscribe(self, topic_filter: str) -> None:
        """Subscribe at QoS 1; raise NotAuthorized when the broker refuses."""
        ...

    def publish(self, message: Outgoing) -> None:
        """Publish and, at QoS 1, wait for the broker's acknowledgement."""
        ...

    def receive(self, timeout: float) -> Incoming | None:
        """The next message, or ``None`` after ``timeout`` seconds."""
        ...

    @property
    def is_connected(self) -> bool:
        """False once the connection is lost; the runner then makes a new one."""
        ...

    def disconnect(self) -> None:
        """Close the connection cleanly (no last will is published)."""
        ...


class PahoTransport:
    """A :class:`Transport` over paho-mqtt 2.x (MQTT 3.1.1, one network thread)."""

    def __init__(self) -> None:
        self._client: mqtt.Client | None = None
        self._inbox: queue.Queue[Incoming] = queue.Queue()
        self._connack = threading.Event()
        self._connack_code = 0
        self._connected = False
        self._suback: dict[int, list[ReasonCode]] = {}
        self._suback_ready = threading.Condition()

    def connect(
        self,
        *,
        host: str,
        port: int,
        client_id: str,
        username: str,
        password: str,
        will: Outgoing | None,
        keepalive: int,
    ) -> None:
        """Connect and wait for CONNACK; see :class:`Transport`."""
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        client.username_pw_set(username, password)
        if will is not None:
            client.will_set(will.topic, will.payload, qos=will.qos, retain=False)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self._client = client
        try:
            client.connect(host, port, keepalive=keepalive)
        except OSError as exc:
            raise TransportError(f"cannot reach {host}:{port}: {exc}") from exc
        client.loop_start()
        if not self._connack.wait(_CONNECT_TIMEOUT):
            self.disconnect()
            raise TransportError("no CONNACK from the broker")
        if not self._connected:
            self.disconnect()
            if self._connack_code in _AUTH_REFUSALS:
                raise NotAuthorized(f"broker refused the login (code {self._connack_code})")
            raise TransportError(f"broker refused the connection (code {self._connack_code})")

    def subscribe(self, topic_filter: str) -> None:
        """Subscribe at QoS 1 and wait for the SUBACK."""
        client = self._require_client()
        result, mid = client.subscribe(topic_filter, qos=1)
        if result != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise TransportError(f"subscribe failed: {mqtt.error_string(result)}")
        with self._suback_ready:
            if not self._suback_ready.wait_for(lambda: mid in self._suback, _ACK_TIMEOUT):
                raise TransportError("no SUBACK from the broker")
            codes = self._suback.pop(mid)
        if any(code.is_failure for code in codes):
            raise NotAuthorized(f"broker refused the subscription to {topic_filter}")

    def publish(self, message: Outgoing) -> None:
        """Publish; at QoS 1 wait for PUBACK."""
        client = self._require_client()
        info = client.publish(message.topic, message.payload, qos=message.qos)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise TransportError(f"publish failed: {mqtt.error_string(info.rc)}")
        if message.qos > 0:
            try:
                info.wait_for_publish(timeout=_ACK_TIMEOUT)
            except RuntimeError as exc:
                raise TransportError(f"publish failed: {exc}") from exc
            if not info.is_published():
                raise TransportError("no PUBACK from the broker")

    def receive(self, timeout: float) -> Incoming | None:
        """The next message, or ``None`` after ``timeout``."""
        try:
            return self._inbox.get(timeout=timeout)
        except queue.Empty:
            return None

    @property
    def is_connected(self) -> bool:
        """Whether the connection is up."""
        return self._connected

    def disconnect(self) -> None:
        """Disconnect cleanly and stop the network thread."""
        client = self._client
        if client is None:
            return
        self._connected = False
        client.disconnect()
        client.loop_stop()
        self._client = None

    def _require_client(self) -> mqtt.Client:
        if self._client is None or not self._connected:
            raise TransportError("not connected")
        return self._client

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        self._connack_code = reason.value
        self._connected = not reason.is_failure
        self._connack.set()

    def _on_disconnect(self, client: mqtt.Client, _u: Any, _f: Any, _r: Any, _p: Any) -> None:
        self._connected = False
        self._connack.set()
        # No automatic reconnect: the runner decides when and how to come back.
        # (paho's loop_stop does not join when called from its own thread.)
        client.loop_stop()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._inbox.put(Incoming(msg.topic, bytes(msg.payload)))

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, codes: list[ReasonCode], _p: Any) -> None:
        with self._suback_ready:
            self._suback[mid] = list(codes)
            self._suback_ready.notify_all()
