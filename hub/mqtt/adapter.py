"""The hub's MQTT client: the only module that imports paho.

Messages arrive on paho's network thread and go into a queue; one dispatcher
thread drains it in batches, hands each batch to the :class:`InboundRouter`
(one database transaction per batch) and publishes the replies only after that
commit. Publishing is bounded by an in-flight window: paho silently stops
completing QoS 1 publishes beyond ~65,535 outstanding, so callers block
instead (back-pressure). When the router's handlers hold work over
(:attr:`hub.inbound.InboundRouter.has_backlog`), the client of the device
topics serves it (:meth:`~hub.inbound.InboundRouter.serve_backlog`) as soon as
the previous replies are published, alternating with message batches while
messages keep coming (so other traffic cannot starve it): the publish window
then paces the held-over work. A client of the claim topics only never
does (the replies are device messages for the other broker).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from hub.errors import BrokerError
from hub.inbound import BatchResult, InboundRouter
from hub.mqtt.outbound import Inbound, Outbound
from protocols import topics

log = logging.getLogger(__name__)

BATCH_MAX = 500
BATCH_ATTEMPTS = 3
ACK_FLUSH_SECONDS = 0.5
INFLIGHT_WINDOW = 1000
WINDOW_POLL_SECONDS = 0.5
PAHO_INFLIGHT_LIMIT = 0  # unlimited in paho: the window above bounds it
_CONNECT_TIMEOUT = 15.0


class HubMqttClient:
    """Subscribes to device and/or claim topics, dispatches batches, publishes replies.

    One instance per broker connection: with Mosquitto, claims live on a broker
    process of their own, and the hub holds one client on each.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        client_id: str,
        username: str,
        password: str,
        router: InboundRouter,
        filters: tuple[str, ...] = (topics.HUB_UP_FILTER, topics.HUB_CLAIM_FILTER),
        on_credentials_changed: Callable[[], None] | None = None,
        on_acknowledged: Callable[[list[str]], None] | None = None,
        shared_group: str | None = None,
    ) -> None:
        self._host, self._port = host, port
        self._router = router
        self._on_credentials_changed = on_credentials_changed
        self._on_acknowledged = on_acknowledged
        self._track_lock = threading.Lock()
        self._in_flight: dict[int, str | None] = {}  # mid -> what it tracks
        self._early_acks: set[int] = set()
        self._acknowledged: list[str] = []
        self._filters = list(filters)
        self._serves_devices = topics.HUB_UP_FILTER in filters
        if shared_group:
            self._filters = [f"$share/{shared_group}/{f}" for f in self._filters]
        self._inbox: queue.Queue[Inbound | None] = queue.Queue()
        self._window = threading.BoundedSemaphore(INFLIGHT_WINDOW)
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=False,  # the broker keeps our QoS 1 backlog across restarts
        )
        self._client.username_pw_set(username, password)
        # Our semaphore is the in-flight window. paho's own limit is switched off
        # (0): with one set, every PUBACK makes paho scan all outstanding messages
        # for queued ones (_update_inflight), O(window) per acknowledgement.
        self._client.max_inflight_messages_set(PAHO_INFLIGHT_LIMIT)
        self._client.reconnect_delay_set(min_delay=1, max_delay=10)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish
        self._dispatcher = threading.Thread(
            target=self._dispatch_loop, name="hub-dispatch", daemon=True
        )

    @property
    def connected(self) -> bool:
        """Whether the hub currently has a broker connection."""
        return self._connected.is_set()

    def start(self) -> None:
        """Connect, subscribe and start dispatching.

        Raises:
            BrokerError: the broker is unreachable or refused the hub's login.
        """
        try:
            self._client.connect(self._host, self._port, keepalive=30)
        except OSError as exc:
            raise BrokerError(
                f"cannot reach the MQTT broker at {self._host}:{self._port}: {exc}"
            ) from exc
        self._client.loop_start()
        if not self._connected.wait(_CONNECT_TIMEOUT):
            self._client.loop_stop()
            raise BrokerError("the broker did not accept the hub's MQTT login")
        self._dispatcher.start()

    def stop(self) -> None:
        """Finish the batch in hand, then disconnect."""
        self._stopping.set()
        self._inbox.put(None)
        if self._dispatcher.is_alive():
            self._dispatcher.join(timeout=10)
        self._client.disconnect()
        self._client.loop_stop()

    def publish(self, messages: list[Outbound]) -> None:
        """Publish ``messages`` at their QoS, blocking while the window is full.

        Once the hub is stopping, a full window ends the call: the replies not
        yet sent are dropped (devices ask again; manifests are re-sent).
        """
        for index, message in enumerate(messages):
            if not self._acquire_slot():
                log.warning(
                    "hub stopping: %d replies not published (devices ask again)",
                    len(messages) - index,
                )
                return
            # Never hold our lock while calling paho: paho's network thread holds
            # its own lock when it calls _on_publish, which takes ours (deadlock).
            info = self._client.publish(message.topic, message.payload, qos=message.qos)
            self._record(info.mid, message.track)
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                self._window.release()
                log.error("publish to %s failed: %s", message.topic, mqtt.error_string(info.rc))

    def _acquire_slot(self) -> bool:
        """Wait for a window slot; ``False`` once the hub is stopping.

        While the broker is away no PUBACK frees a slot, so an unbounded wait
        would keep a stopping hub's dispatcher (and its shutdown) waiting.
        """
        while not self._window.acquire(timeout=WINDOW_POLL_SECONDS):
            if self._stopping.is_set():
                return False
        return True

    def _on_connect(
        self, client: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any
    ) -> None:
        if reason.is_failure:
            log.error("broker refused the hub's login: %s", reason)
            return
        # Subscribe on every connect: the hub, not the broker session, is the truth.
        client.subscribe([(f, 1) for f in self._filters])
        self._connected.set()
        log.info("hub MQTT client connected to %s:%d", self._host, self._port)

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        self._connected.clear()
        if not self._stopping.is_set():
            log.warning("hub MQTT client disconnected (%s); paho reconnects", reason)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._inbox.put(Inbound(msg.topic, bytes(msg.payload)))

    def _record(self, mid: int, track: str | None) -> None:
        """Remember what a publish tracks, unless its PUBACK already arrived."""
        with self._track_lock:
            if mid in self._early_acks:
                self._early_acks.discard(mid)
                if track is not None:
                    self._acknowledged.append(track)
            else:
                self._in_flight[mid] = track

    def _on_publish(self, _c: Any, _u: Any, mid: int, _r: Any, _p: Any) -> None:
        # Fires once per publish (QoS 0: written; QoS 1: PUBACK), freeing its slot.
        self._window.release()
        with self._track_lock:
            if mid not in self._in_flight:
                # The ack beat publish() to _record (paho may send and get the
                # PUBACK before publish returns); _record settles it.
                self._early_acks.add(mid)
                return
            track = self._in_flight.pop(mid)
            if track is not None:
                self._acknowledged.append(track)

    def _dispatch_loop(self) -> None:
        served = True  # whether the held-over work was served since the last message batch
        while True:
            held = self._serves_devices and self._router.has_backlog and not self._stopping.is_set()
            if held and not served:
                # Alternate with message batches: steady traffic of other kinds
                # (usage, manifest acks) must not starve the held-over work.
                self._run_batch(None)
                served = True
                continue
            try:
                first = (
                    self._inbox.get_nowait() if held else self._inbox.get(timeout=ACK_FLUSH_SECONDS)
                )
            except queue.Empty:
                if held:
                    self._run_batch(None)  # serve the held-over work now
                else:
                    self._flush_acknowledged()
                continue
            served = False
            if first is None:
                self._flush_acknowledged()
                return
            batch = [first]
            while len(batch) < BATCH_MAX:
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._inbox.put(None)
                    break
                batch.append(item)
            self._run_batch(batch)

    def _flush_acknowledged(self) -> None:
        with self._track_lock:
            tracks, self._acknowledged = self._acknowledged, []
        if not tracks or self._on_acknowledged is None:
            return
        try:
            self._on_acknowledged(tracks)
        except Exception:
            log.exception("recording %d broker acknowledgements failed", len(tracks))

    def _run_batch(self, batch: list[Inbound] | None) -> None:
        """Handle ``batch`` (``None``: the router's held-over work), then publish the replies."""
        self._flush_acknowledged()
        result = self._handle_with_retries(batch)
        if result is None:
            return
        try:
            if result.credentials_changed and self._on_credentials_changed is not None:
                self._on_credentials_changed()
        except Exception:
            # The claim is committed; the device retries its login with
            # backoff, and the next successful refresh lets it in.
            log.exception("refreshing broker credentials failed")
        try:
            self.publish(result.outbound)
        except Exception:
            log.exception("publishing %d replies failed", len(result.outbound))

    def _handle_with_retries(self, batch: list[Inbound] | None) -> BatchResult | None:
        # A failed batch rolled back as a whole, so running it again is safe;
        # a database outage must still not kill the dispatcher.
        for attempt in range(1, BATCH_ATTEMPTS + 1):
            try:
                if batch is None:
                    return self._router.serve_backlog()
                return self._router.handle_batch(batch)
            except Exception:
                if attempt == BATCH_ATTEMPTS or self._stopping.is_set():
                    size = 0 if batch is None else len(batch)
                    log.exception("batch of %d messages failed; nothing committed", size)
                    return None
                log.warning("batch failed (attempt %d); retrying", attempt, exc_info=True)
                time.sleep(0.2 * attempt)
        return None
