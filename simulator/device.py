"""One simulated device: the real agent code, driven on the fleet's event loop.

A :class:`SimDevice` does what ``device_agent.runner.AgentRunner`` does, with
asyncio instead of a thread: it claims an identity with the real claim flow
(:func:`device_agent.session.build_claim`, :func:`read_claim_reply`), keeps it
in a real state directory (:class:`IdentityStore`, :class:`TrustStore`), and
runs a real :class:`DeviceSession` with the real session components. Only the
socket work differs (:class:`simulator.transport.AsyncTransport`).

Behaviours of its group are layered on top: the device application checks its
features and meters usage on every tick, a flaky link drops now and then, an
offline device disappears for long stretches, its clock may be skewed. An
agent crash drops the connection without a goodbye and rebuilds everything
from the state directory, with a new boot epoch, as a restarted process would.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_agent.components import ComponentContext
from device_agent.config import AgentConfig
from device_agent.errors import AgentError, ClaimFailed, NotAuthorized, TransportError
from device_agent.features import Features
from device_agent.firmware.component import FirmwareComponent
from device_agent.identity import Identity, IdentityStore
from device_agent.metering.meter import Meter
from device_agent.outgoing import Outgoing
from device_agent.runner import Backoff
from device_agent.session import DeviceSession, build_claim, read_claim_reply
from device_agent.trust_store import TrustStore
from protocols import topics
from protocols.errors import ProtocolError
from protocols.ids import CLAIM_CLIENT_PREFIX
from simulator import components as parts
from simulator.recorder import DeviceRecord, Recorder
from simulator.scenario import Group
from simulator.transport import AsyncTransport

log = logging.getLogger(__name__)

CLAIM_REPLY_TIMEOUT = 20.0
AGENT_VERSION = "0.1.0-sim"
FLAG_FEATURE = "premium"


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where a device connects: its broker (maybe through a proxy) and the claim broker."""

    host: str
    port: int
    claim_host: str
    claim_port: int


class ConnectGate:
    """Paces connection attempts fleet-wide (connects per second), so nobody storms.

    With ``in_flight`` it also bounds how many attempts may be outstanding at
    once (:meth:`slot`): claims wait for the hub's answer, and more claims in
    flight than the hub answers within the agents' reply timeout only produce
    timeouts and re-issued credentials.
    """

    def __init__(self, per_second: float, in_flight: int | None = None) -> None:
        self._interval = 1.0 / per_second
        self._next = 0.0
        self._lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(in_flight) if in_flight else None

    async def wait(self) -> None:
        """Return when this caller may connect."""
        async with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self._interval
        await asyncio.sleep(max(0.0, slot - time.monotonic()))

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the in-flight slots (if bounded) for one paced attempt."""
        if self._slots is None:
            await self.wait()
            yield
            return
        async with self._slots:
            await self.wait()
            yield


@dataclass
class DeviceSpec:
    """What a simulated device is given at the factory."""

    serial: str
    group: Group
    state_dir: Path
    endpoints: Endpoints
    bind_address: str
    keepalive: int
    heartbeat_seconds: float
    token: str | None = None
    key: Ed25519PrivateKey | None = None
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)


class SimDevice:
    """A device agent on the shared loop; see the module docstring."""

    def __init__(
        self,
        spec: DeviceSpec,
        *,
        recorder: Recorder,
        gate: ConnectGate,
        rng: random.Random,
        run_start: Callable[[], float],
        connect_allowed: asyncio.Event | None = None,
        claim_gate: ConnectGate | None = None,
    ) -> None:
        self.spec = spec
        self.group = spec.group
        self.rng = rng
        self.gate = gate
        self.claim_gate = claim_gate or gate
        self.recorder = recorder
        self.record: DeviceRecord = recorder.devices[spec.serial]
        self._run_start = run_start
        self._connect_allowed = connect_allowed
        self.store = IdentityStore(spec.state_dir)
        self.session: DeviceSession | None = None
        self.features: Features | None = None
        self.transport: AsyncTransport | None = None
        self.online = False
        self.in_run = False  # the run phase: flaky links and offline stretches apply
        self.settling = False  # faults and misbehaviour over: stay connected
        self.stopping = False
        self._crash = asyncio.Event()
        self._backoff = Backoff(0.5, 8.0, rng)
        self._send_lock = asyncio.Lock()
        self._next_beat = 0.0
        self._next_drop = math.inf
        self._offline_phase = rng.uniform(0, spec.group.offline_every_seconds)
        self._usage_debt = 0.0
        self.meter: Meter | None = None
        self.firmware: FirmwareComponent | None = None
        self.first_manifest: bytes | None = None
        self.attack_at = math.inf
        self.attacking = False
        self.pending_attacks: list[str] = []

    # ---------------------------------------------------------------- time

    def now(self) -> int:
        """The device's own clock (skewed as its group says), Unix seconds."""
        return int(time.time()) + self.group.clock_skew_seconds

    @property
    def device_id(self) -> str:
        """The hub-issued id ('' before the claim)."""
        return self.record.device_id

    # ---------------------------------------------------------------- life

    async def run(self) -> None:
        """Boot, claim if needed, stay connected; rebuild after each crash."""
        while not self.stopping:
            self._crash.clear()
            try:
                if not await self._boot():
                    return
                await self._live()
            except AgentError as exc:
                log.error("%s: agent stopped: %s", self.spec.serial, exc)
                return
            if self._crash.is_set() and not self.stopping:
                await asyncio.sleep(self.rng.uniform(0.5, 2.0))  # the process restarts

    async def _boot(self) -> bool:
        self.record.boot_epochs += 1
        boot_epoch = self.store.next_boot_epoch()
        identity = self.store.load() or await self._claim_until_done()
        if identity is None:
            return False
        trust = TrustStore.open(self.spec.state_dir, identity)
        config = self._config()
        context = ComponentContext(
            config=config,
            identity=identity,
            trust=trust,
            state_dir=self.spec.state_dir,
            clock=lambda: float(self.now()),
        )
        if self.session is not None:
            parts.close(self.session.components)  # the crashed process let go of them
        found = parts.build(context)
        self.meter = parts.meter_for(found, trust, lambda: float(self.now()))
        self.firmware = parts.firmware(found)
        if self.firmware is not None and not self.record.firmware_original:
            self.record.firmware_original = self._image_digest(self.firmware)
        self.session = DeviceSession(
            identity,
            agent_version=AGENT_VERSION,
            boot_epoch=boot_epoch,
            trust=trust,
            components=found,
        )
        self.features = Features(trust, clock=lambda: float(self.now()))
        self.record.manifest_seq = trust.state.manifest_seq
        return True

    def _config(self) -> AgentConfig:
        ends = self.spec.endpoints
        return AgentConfig(
            serial=self.spec.serial,
            state_dir=self.spec.state_dir,
            broker_host=ends.host,
            broker_port=ends.port,
            claim_port=ends.claim_port,
            claim_token=self.spec.token,
            keepalive=self.spec.keepalive,
            heartbeat_seconds=self.spec.heartbeat_seconds,
            agent_version=AGENT_VERSION,
            sections=self.spec.sections,
        )

    async def _live(self) -> None:
        assert self.session is not None
        if self._connect_allowed is not None:
            await self._connect_allowed.wait()  # the fleet measures claims and connects apart
        while not self.stopping and not self._crash.is_set():
            await self._wait_until_reachable()
            if self.stopping or self._crash.is_set():
                return
            await self.gate.wait()
            try:
                await self._operate(self.session)
            except NotAuthorized as exc:
                self.record.errors["not_authorized"] = (
                    self.record.errors.get("not_authorized", 0) + 1
                )
                log.info("%s: broker refused: %s", self.spec.serial, exc)
            except TransportError as exc:
                log.debug("%s: connection lost: %s", self.spec.serial, exc)
            finally:
                if self.online and not self.stopping:
                    self.record.connection_losses += 1
                self.online = False
            if not self.stopping and not self._crash.is_set():
                await asyncio.sleep(self._backoff.next_delay())

    async def _wait_until_reachable(self) -> None:
        while not self.stopping and not self._crash.is_set() and self._offline_now():
            await asyncio.sleep(1.0)

    def _offline_now(self) -> bool:
        if not self.in_run or self.settling or self.group.connectivity != "offline":
            return False
        since = time.monotonic() - self._run_start() + self._offline_phase
        return 0 <= since % self.group.offline_every_seconds < self.group.offline_seconds

    async def _operate(self, session: DeviceSession) -> None:
        identity = session.identity
        transport = AsyncTransport(
            host=self.spec.endpoints.host,
            port=self.spec.endpoints.port,
            client_id=identity.mqtt_username,
            username=identity.mqtt_username,
            password=identity.mqtt_password,
            will=session.will(),
            keepalive=self.spec.keepalive,
            bind_address=self.spec.bind_address,
        )
        await transport.connect()
        self.transport = transport
        try:
            for topic_filter in session.subscriptions():
                await transport.subscribe(topic_filter)
            self.online = True
            self.record.connects += 1
            self._backoff.reset()
            self._next_beat = time.monotonic() + self.spec.heartbeat_seconds
            self._schedule_drop()
            await self.send(session.on_connected(now=self.now()))
            async for incoming in transport.messages():
                await self._on_message(session, incoming.topic, incoming.payload)
        finally:
            self.transport = None
            if self.stopping:
                await transport.close()
            elif transport.is_open:
                transport.crash()

    async def _on_message(self, session: DeviceSession, topic: str, payload: bytes) -> None:
        self.recorder.received(self.record, topic, payload)
        if self.first_manifest is None and topic.endswith("/down/manifest"):
            self.first_manifest = payload
        before = session.manifest_seq
        out = session.on_message(topic, payload, now=self.now())
        after = session.manifest_seq
        if after != before:
            self.record.manifest_seq = after
            self.record.manifests_accepted += 1
        await self.send(out)

    async def send(self, messages: list[Outgoing]) -> None:
        """Publish in order; a failure drops the connection (the loop reconnects)."""
        if not messages:
            return
        transport = self.transport
        if transport is None:
            return
        async with self._send_lock:
            try:
                for message in messages:
                    # Noted before the publish: one cut short by a dropped link may
                    # still have reached the broker (and be stored and acknowledged).
                    self.recorder.sent(self.record, message.topic, message.payload)
                    await transport.publish(message)
            except TransportError as exc:
                log.debug("%s: publish failed: %s", self.spec.serial, exc)
                transport.crash()

    @staticmethod
    def _image_digest(firmware: FirmwareComponent) -> str:
        return hashlib.sha256(firmware.running_image()).hexdigest()

    def record_firmware(self) -> None:
        """Note the image the device runs now (at the end of the run)."""
        if self.firmware is not None:
            try:
                self.record.firmware_running = self._image_digest(self.firmware)
            except Exception as exc:  # a corrupted slot may raise anything: a finding
                log.error("%s: cannot read the running image: %s", self.spec.serial, exc)
                self.record.firmware_unreadable = f"cannot read its running image: {exc!r}"

    # ---------------------------------------------------------------- faults

    def crash(self) -> None:
        """The agent process dies: no goodbye; it restarts from its state directory."""
        self.record.crashes += 1
        self._crash.set()
        self.meter = None  # the application died with the process
        self.features = None
        if self.transport is not None:
            self.transport.crash()

    def drop_link(self) -> None:
        """The network drops the connection (no goodbye); the agent reconnects."""
        if self.transport is not None:
            self.transport.crash()

    def _schedule_drop(self) -> None:
        if self.group.connectivity == "flaky" and self.in_run and not self.settling:
            mean = self.group.flaky_mean_up_seconds
            self._next_drop = time.monotonic() + self.rng.expovariate(1.0 / mean)
        else:
            self._next_drop = math.inf

    async def stop(self) -> None:
        """Say goodbye (seats back, offline status), disconnect cleanly and stop."""
        if self.record.stopped_at is None:
            self.record.stopped_at = time.time()
        transport = self.transport
        if transport is not None and self.session is not None:
            with contextlib.suppress(TransportError):
                await self.send(self.session.going_offline())
        self.stopping = True
        if transport is not None:
            await transport.close()

    # ---------------------------------------------------------------- ticks

    def tick(self, dt: float) -> list[Outgoing]:
        """The device application and periodic agent work, once per fleet tick."""
        session = self.session
        if session is None:
            return []
        now = self.now()
        self._check_features(session)
        self._meter_usage(dt, now)
        if not self.online:
            return []
        out = session.tick(now=now)
        mono = time.monotonic()
        if mono >= self._next_beat:
            out += session.heartbeat()
            self._next_beat = mono + self.spec.heartbeat_seconds
        if self._next_drop == math.inf and self.in_run:
            self._schedule_drop()
        if mono >= self._next_drop or self._offline_now():
            self._next_drop = math.inf
            self.drop_link()  # the link is gone: no goodbye, the broker sends the will
        return out

    def _check_features(self, session: DeviceSession) -> None:
        if self.features is None or session.trust is None:
            return
        state = session.trust.state
        manifest = state.manifest
        not_after = manifest.not_after if manifest is not None else None
        try:
            enabled = self.features.is_enabled(FLAG_FEATURE, now=self.now())
        except AgentError as exc:
            log.warning("%s: feature check failed: %s", self.spec.serial, exc)
            return
        self.recorder.feature_check(
            self.record,
            feature=FLAG_FEATURE,
            enabled=enabled,
            real_now=time.time(),
            not_after=not_after,
            seq=state.manifest_seq,
        )

    def _meter_usage(self, dt: float, now: int) -> None:
        rate = self.group.usage_rate * self._usage_factor()
        if rate <= 0 or self.features is None or self.settling:
            return
        self._usage_debt += rate * dt
        events = int(self._usage_debt)
        self._usage_debt -= events
        for _ in range(events):
            if self.meter is not None:
                recorded = parts.record_usage(self.meter, quantity=1, now=now)
            else:  # no metering component: enforce the cap locally, nothing is reported
                try:
                    recorded = self.features.try_consume(parts.METER_FEATURE, 1, now=now)
                except AgentError:
                    recorded = False
            self.record.usage_generated += int(recorded)

    def _usage_factor(self) -> float:
        profile = self.group.usage
        elapsed = time.monotonic() - self._run_start()
        if profile == "none":
            return 0.0
        if profile == "bursty":
            return 4.0 if elapsed % 25.0 < 5.0 else 0.25
        if profile == "daily":
            return 1.0 + math.sin(2 * math.pi * elapsed / 120.0)
        return 1.0

    # ---------------------------------------------------------------- claim

    async def _claim_until_done(self) -> Identity | None:
        key = self.spec.key or self.store.load_or_create_device_key()
        while not self.stopping:
            try:
                async with self.claim_gate.slot():
                    identity = await self._claim_once(key)
            except ClaimFailed as exc:
                self.record.errors[exc.code] = self.record.errors.get(exc.code, 0) + 1
                log.info("%s: claim refused: %s", self.spec.serial, exc)
            except (TransportError, ProtocolError, TimeoutError) as exc:
                log.debug("%s: claim attempt failed: %s", self.spec.serial, exc)
            else:
                self.store.save(identity)
                self.record.device_id = identity.device_id
                self.record.claimed_at = time.time()
                self._backoff.reset()
                return identity
            await asyncio.sleep(self._backoff.next_delay())
        return None

    async def _claim_once(self, key: Ed25519PrivateKey) -> Identity:
        client_id = CLAIM_CLIENT_PREFIX + secrets.token_hex(12)
        transport = AsyncTransport(
            host=self.spec.endpoints.claim_host,
            port=self.spec.endpoints.claim_port,
            client_id=client_id,
            username=client_id,
            password="claim",  # noqa: S106 - claim sessions need no secret (protocol §2)
            will=None,
            keepalive=self.spec.keepalive,
            bind_address=self.spec.bind_address,
        )
        await transport.connect()
        try:
            await transport.subscribe(topics.claim_response(client_id))
            request = build_claim(
                client_id=client_id,
                serial=self.spec.serial,
                key=key,
                token=self.spec.token,
                nonce=secrets.token_bytes(16),
                now=self.now(),
            )
            await transport.publish(request)
            async with asyncio.timeout(CLAIM_REPLY_TIMEOUT):
                async for incoming in transport.messages():
                    return read_claim_reply(incoming.payload)
            raise TransportError("the claim session ended without an answer")
        finally:
            await transport.close()
