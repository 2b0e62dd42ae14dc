"""A small synchronous paho client for tests: connect, subscribe, publish, collect."""

from __future__ import annotations

import queue
import secrets
import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


class TestClient:
    """A paho client whose received messages land in a queue."""

    __test__ = False  # not a pytest test class

    def __init__(
        self, client_id: str, username: str | None = None, password: str | None = None
    ) -> None:
        self.client_id = client_id
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.connack: int | None = None
        self.disconnected = threading.Event()
        self._connected = threading.Event()
        self._subacks: dict[int, list[Any]] = {}
        self._suback_event = threading.Condition()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311
        )
        self.client.username_pw_set(username if username is not None else client_id, password)
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda _c, _u, m: self.messages.put((m.topic, bytes(m.payload)))
        self.client.on_disconnect = lambda *_a: self.disconnected.set()
        self.client.on_subscribe = self._on_subscribe

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.connack = reason.value
        self._connected.set()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, codes: list[Any], _p: Any) -> None:
        with self._suback_event:
            self._subacks[mid] = codes
            self._suback_event.notify_all()

    def connect(self, port: int, timeout: float = 10.0) -> bool:
        """Connect; returns whether the broker accepted the login."""
        self.client.reconnect_delay_set(60, 120)  # tests decide about reconnects
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(timeout):
            return False
        return self.connack == 0

    def subscribe(self, topic_filter: str, timeout: float = 10.0) -> bool:
        """Subscribe at QoS 1; returns whether the broker granted it."""
        _, mid = self.client.subscribe(topic_filter, qos=1)
        with self._suback_event:
            self._suback_event.wait_for(lambda: mid in self._subacks, timeout)
            codes = self._subacks.get(mid, [])
        return bool(codes) and not any(code.is_failure for code in codes)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Publish and wait for the broker's acknowledgement (best effort)."""
        info = self.client.publish(topic, payload, qos=qos)
        info.wait_for_publish(timeout=5)

    def receive(self, timeout: float = 10.0) -> tuple[str, bytes] | None:
        """The next message, or ``None``."""
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()


def claim_client_id() -> str:
    """A fresh claim-session client id."""
    return "claim-" + secrets.token_hex(8)
