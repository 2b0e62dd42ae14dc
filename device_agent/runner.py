"""The agent's orchestrator: does the IO and owns the failure policy.

It claims an identity when it has none, then keeps one operational session
alive: reconnect with jittered exponential backoff, resubscribe and say hello
on every connect (the hub, not the broker session, is the source of truth),
heartbeat, and a clean offline status on stop.
"""

from __future__ import annotations

import logging
import random
import secrets
import threading
import time
from collections.abc import Callable, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_agent.components import ComponentContext, SessionComponent, default_components
from device_agent.config import AgentConfig
from device_agent.errors import AgentError, ClaimFailed, NotAuthorized, StateError, TransportError
from device_agent.features import Features
from device_agent.identity import Identity, IdentityStore, load_pem_device_key
from device_agent.metering.api import open_meter_for
from device_agent.metering.meter import Meter
from device_agent.session import DeviceSession, build_claim, read_claim_reply
from device_agent.transport import PahoTransport, Transport
from device_agent.trust_store import TrustStore
from protocols import topics
from protocols.errors import ProtocolError
from protocols.ids import CLAIM_CLIENT_PREFIX

log = logging.getLogger(__name__)

CLAIM_REPLY_TIMEOUT = 15.0


class Backoff:
    """Exponential backoff with full jitter, so a fleet never reconnects in step."""

    def __init__(self, low: float, high: float, rng: random.Random) -> None:
        self.low, self.high, self.rng = low, high, rng
        self.attempt = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; grows until :meth:`reset`."""
        ceiling = min(self.high, self.low * (2**self.attempt))
        self.attempt = min(self.attempt + 1, 32)
        return self.rng.uniform(self.low / 2, ceiling)

    def reset(self) -> None:
        """Start over after a success."""
        self.attempt = 0


class AgentRunner:
    """Runs one device agent until ``stop`` is set."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        transport_factory: Callable[[], Transport] = PahoTransport,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        stop: threading.Event | None = None,
        components: Callable[[ComponentContext], Sequence[SessionComponent]] = default_components,
    ) -> None:
        self.config = config
        self.store = IdentityStore(config.state_dir)
        self._transport_factory = transport_factory
        self._clock = clock
        self._stop = stop or threading.Event()
        self._components = components
        self._claim_clock_offset = 0
        rng = rng or random.Random(secrets.randbits(64))  # noqa: S311 - jitter, not crypto
        self._backoff = Backoff(config.reconnect_min_seconds, config.reconnect_max_seconds, rng)
        self.session: DeviceSession | None = None
        self.trust: TrustStore | None = None

    def run(self) -> None:
        """Claim if needed, then stay connected until stopped."""
        boot_epoch = self.store.next_boot_epoch()
        identity = self.store.load() or self._claim_until_done()
        if identity is None:
            return
        self.trust = TrustStore.open(self.config.state_dir, identity)
        self.session = DeviceSession(
            identity,
            agent_version=self.config.agent_version,
            boot_epoch=boot_epoch,
            trust=self.trust,
            seat_products=self.config.seat_products,
            components=self._components(
                ComponentContext(
                    config=self.config,
                    identity=identity,
                    trust=self.trust,
                    state_dir=self.config.state_dir,
                    clock=self._clock,
                    boot_epoch=boot_epoch,
                )
            ),
        )
        while not self._stop.is_set():
            try:
                self._operate(self.session)
            except NotAuthorized as exc:
                log.error("broker refused device %s: %s", identity.device_id, exc)
            except TransportError as exc:
                log.warning("connection lost: %s", exc)
            self._pause()

    @property
    def features(self) -> Features:
        """The device application's view: ``is_enabled``, ``limit``, ``try_consume``.

        Raises:
            StateError: before the device has an identity (nothing is enabled then).
        """
        if self.trust is None:
            raise StateError("no identity yet: every feature is at its safe default")
        return Features(self.trust, clock=self._clock)

    def meter(self) -> Meter:
        """A usage meter for the device application (close it when done).

        It records into the agent's durable buffer; the running session
        publishes the records and deletes them once the hub acknowledges them.

        Raises:
            ConfigError: the configuration has no enabled ``[metering]`` table.
            StateError: the buffer cannot be opened.
        """
        return open_meter_for(self.config, clock=self._clock)

    def stop(self) -> None:
        """Ask the runner to finish; safe from any thread or signal handler."""
        self._stop.set()

    def _pause(self) -> None:
        if not self._stop.is_set():
            self._stop.wait(self._backoff.next_delay())

    def _claim_until_done(self) -> Identity | None:
        key = self._device_key()
        while not self._stop.is_set():
            try:
                identity = self._claim_once(key)
            except ClaimFailed as exc:
                log.error("claim refused: %s", exc)
                self._correct_claim_clock(exc)
            except (TransportError, ProtocolError) as exc:
                log.warning("claim attempt failed: %s", exc)
            else:
                self.store.save(identity)
                self._backoff.reset()
                log.info("claimed: device id %s", identity.device_id)
                return identity
            self._pause()
        return None

    def _correct_claim_clock(self, refusal: ClaimFailed) -> None:
        """After ``stale_request``, sign the next claim with the hub's time.

        A device whose clock is off (no RTC battery, factory default date)
        could otherwise never claim. The offset is only used for the claim's
        timestamp; it never touches the trust core's clock.
        """
        if refusal.code == "stale_request" and refusal.server_time is not None:
            self._claim_clock_offset = refusal.server_time - int(self._clock())
            offset = self._claim_clock_offset
            log.warning("claim clock corrected by %+d s from the hub's time", offset)

    def _device_key(self) -> Ed25519PrivateKey:
        if self.config.claim_key_file is not None:
            return load_pem_device_key(self.config.claim_key_file)
        return self.store.load_or_create_device_key()

    def _claim_once(self, key: Ed25519PrivateKey) -> Identity:
        client_id = CLAIM_CLIENT_PREFIX + secrets.token_hex(12)
        transport = self._transport_factory()
        transport.connect(
            host=self.config.broker_host,
            port=self.config.claim_port,
            client_id=client_id,
            username=client_id,
            password="claim",  # noqa: S106 - claim sessions need no secret (docs/protocol.md §2)
            will=None,
            keepalive=self.config.keepalive,
        )
        try:
            transport.subscribe(topics.claim_response(client_id))
            request = build_claim(
                client_id=client_id,
                serial=self.config.serial,
                key=key,
                token=self.config.claim_token,
                nonce=secrets.token_bytes(16),
                now=int(self._clock()) + self._claim_clock_offset,
            )
            transport.publish(request)
            reply = transport.receive(CLAIM_REPLY_TIMEOUT)
            if reply is None:
                raise TransportError("no answer to the claim request")
            return read_claim_reply(reply.payload)
        finally:
            transport.disconnect()

    def _operate(self, session: DeviceSession) -> None:
        identity = session.identity
        transport = self._transport_factory()
        transport.connect(
            host=self.config.broker_host,
            port=self.config.broker_port,
            client_id=identity.mqtt_username,
            username=identity.mqtt_username,
            password=identity.mqtt_password,
            will=session.will(),
            keepalive=self.config.keepalive,
        )
        try:
            for topic_filter in session.subscriptions():
                transport.subscribe(topic_filter)
            for message in session.on_connected(now=int(self._clock())):
                transport.publish(message)
            self._backoff.reset()
            log.info("online as %s", identity.device_id)
            self._serve(session, transport)
            if self._stop.is_set():
                for message in session.going_offline():
                    transport.publish(message)
        finally:
            transport.disconnect()

    def _serve(self, session: DeviceSession, transport: Transport) -> None:
        next_beat = self._clock() + self.config.heartbeat_seconds
        while not self._stop.is_set():
            if not transport.is_connected:
                raise TransportError("connection dropped")
            incoming = transport.receive(min(0.5, max(0.0, next_beat - self._clock())))
            if incoming is not None:
                now = int(self._clock())
                for message in session.on_message(incoming.topic, incoming.payload, now=now):
                    transport.publish(message)
            for message in session.tick(now=int(self._clock())):
                transport.publish(message)
            if self._clock() >= next_beat:
                for message in session.heartbeat():
                    transport.publish(message)
                next_beat = self._clock() + self.config.heartbeat_seconds


__all__ = ["AgentError", "AgentRunner", "Backoff"]
