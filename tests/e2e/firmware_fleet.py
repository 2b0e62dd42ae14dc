"""A compact in-process fleet for firmware end-to-end tests: many real agents on one loop.

Each device is the real agent code: the real claim flow
(:func:`device_agent.session.build_claim`, :func:`read_claim_reply`), a real
state directory (:class:`IdentityStore`, :class:`TrustStore`), a real
:class:`DeviceSession` with the real :class:`FirmwareComponent` built by
:func:`device_agent.firmware.wiring.build` from a ``[firmware]`` table, over
a real MQTT connection to the hub's broker. Only the socket work differs from
``device-agent run``: the connections share one asyncio loop (aiomqtt via
:class:`simulator.transport.AsyncTransport`) in a background thread, because a
hundred agent processes are too heavy for a two-core machine.

The driver records, per device, every firmware message that came down (offers,
chunks by job, cancels, acks) and every error reply, with the time it arrived,
so a test can prove who was offered what and when.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_agent.components import ComponentContext
from device_agent.config import parse_config
from device_agent.errors import AgentError
from device_agent.firmware import wiring
from device_agent.firmware.component import FirmwareComponent, HealthProbe
from device_agent.firmware.install import SETTLED
from device_agent.firmware.settings import parse_settings
from device_agent.identity import Identity, IdentityStore
from device_agent.outgoing import Outgoing
from device_agent.session import DeviceSession, build_claim, read_claim_reply
from device_agent.trust_store import TrustStore
from protocols import topics
from protocols.errors import ProtocolError
from protocols.firmware_messages import (
    FirmwareCancel,
    FirmwareChunk,
    FirmwareOffer,
    FirmwareReportAck,
)
from protocols.ids import CLAIM_CLIENT_PREFIX
from protocols.messages import ErrorReply, decode_message
from simulator.transport import AsyncTransport

log = logging.getLogger(__name__)

T = TypeVar("T")
TICK_SECONDS = 0.5
CLAIM_TIMEOUT = 30.0


@dataclass
class Seen:
    """What came down to one device."""

    offers: list[tuple[float, str]] = field(default_factory=list)
    chunks: Counter[str] = field(default_factory=Counter)
    cancels: list[tuple[float, str]] = field(default_factory=list)
    acks: int = 0
    errors: list[ErrorReply] = field(default_factory=list)


@dataclass
class FleetDevice:
    """One simulated device of the fleet."""

    serial: str
    directory: Path
    healthy: bool = True
    firmware: dict[str, Any] = field(default_factory=dict)  # overrides of the [firmware] table
    identity: Identity | None = None
    session: DeviceSession | None = None
    component: FirmwareComponent | None = None
    seen: Seen = field(default_factory=Seen)
    online: bool = False
    transport: AsyncTransport | None = None

    @property
    def device_id(self) -> str:
        assert self.identity is not None
        return self.identity.device_id

    def health(self, probe: HealthProbe) -> bool:
        del probe
        return self.healthy

    def settled(self) -> bool:
        """No install in flight and no report waiting for its acknowledgement."""
        component = self.component
        return (
            component is not None
            and component.step in SETTLED
            and component.installer.state.outbox == ()
        )


class FirmwareFleet:
    """Claims, connects and runs many devices on one loop in a background thread."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        claim_port: int,
        vendor_id: str,
        class_id: str,
        root: Path,
        firmware: dict[str, Any] | None = None,
    ) -> None:
        self.host, self.port, self.claim_port = host, port, claim_port
        self.vendor_id, self.class_id = vendor_id, class_id
        self.root = root
        self.firmware = firmware or {}
        self.devices: dict[str, FleetDevice] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._stop: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # -------------------------------------------------------------- control

    def call(self, factory: Callable[[], Awaitable[T]], timeout: float = 120.0) -> T:
        """Run a coroutine on the fleet's loop and wait for its result."""

        async def run() -> T:
            return await factory()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def inspect(self, read: Callable[[], T]) -> T:
        """Read device state on the loop's thread (no race with message handling)."""

        async def run() -> T:
            return read()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(30)

    def add(self, serial: str) -> FleetDevice:
        device = FleetDevice(serial, self.root / serial)
        self.devices[serial] = device
        return device

    def claim_all(self, token: str, concurrency: int = 16) -> None:
        """Claim every device with the batch claim token (the real claim flow)."""

        async def claim_all() -> None:
            slots = asyncio.Semaphore(concurrency)

            async def one(device: FleetDevice) -> None:
                async with slots:
                    device.identity = await self._claim(device, token)

            await asyncio.gather(*(one(d) for d in self.devices.values()))

        self.call(claim_all, timeout=300)

    def connect_all(self, *, except_serials: frozenset[str] = frozenset()) -> None:
        """Build every device's session and keep it connected until :meth:`stop`.

        Devices named in ``except_serials`` stay offline until :meth:`connect`.
        """

        async def start() -> None:
            self._stop = asyncio.Event()
            for device in self.devices.values():
                if device.serial not in except_serials:
                    self._start(device)

        self.call(start)

    def connect(self, device: FleetDevice) -> None:
        """Bring one device that :meth:`connect_all` left offline online."""

        async def start() -> None:
            self._start(device)

        self.call(start)

    def _start(self, device: FleetDevice) -> None:
        self._build(device)
        self._tasks.append(asyncio.create_task(self._serve(device)))

    def stop(self) -> None:
        """Disconnect everyone and stop the loop."""

        async def stop() -> None:
            if self._stop is not None:
                self._stop.set()
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

        with contextlib.suppress(Exception):
            self.call(stop, timeout=60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def publish(self, device: FleetDevice, message: Outgoing) -> None:
        """Publish ``message`` on the device's live connection (as the device)."""

        async def send() -> None:
            assert device.transport is not None, f"{device.serial} is offline"
            await device.transport.publish(message)

        self.call(send)

    # ------------------------------------------------------------ internals

    async def _claim(self, device: FleetDevice, token: str) -> Identity:
        store = IdentityStore(device.directory / "state")
        key: Ed25519PrivateKey = store.load_or_create_device_key()
        for _attempt in range(5):
            client_id = CLAIM_CLIENT_PREFIX + secrets.token_hex(12)
            transport = AsyncTransport(
                host=self.host,
                port=self.claim_port,
                client_id=client_id,
                username=client_id,
                password="claim",
                will=None,
                keepalive=30,
            )
            try:
                await transport.connect()
                await transport.subscribe(topics.claim_response(client_id))
                request = build_claim(
                    client_id=client_id,
                    serial=device.serial,
                    key=key,
                    token=token,
                    nonce=secrets.token_bytes(16),
                    now=int(time.time()),
                )
                await transport.publish(request)
                reply = await asyncio.wait_for(_first(transport), CLAIM_TIMEOUT)
                identity = read_claim_reply(reply)
                store.save(identity)
                return identity
            except (AgentError, ProtocolError, TimeoutError) as exc:
                log.warning("claim of %s failed: %s", device.serial, exc)
                await asyncio.sleep(0.5)
            finally:
                await transport.close()
        raise AssertionError(f"{device.serial} could not claim")

    def _build(self, device: FleetDevice) -> None:
        assert device.identity is not None
        state_dir = device.directory / "state"
        table = {
            "vendor_id": self.vendor_id,
            "class_id": self.class_id,
            **self.firmware,
            **device.firmware,
        }
        config = parse_config(
            {
                "device": {"serial": device.serial, "state_dir": "state"},
                "claim": {"token": "unused"},
                "firmware": table,
            },
            base=device.directory,
        )
        trust = TrustStore.open(state_dir, device.identity)
        context = ComponentContext(config, device.identity, trust, state_dir, clock=time.time)
        settings = parse_settings(table, base=state_dir)
        device.component = wiring.build(context, settings, health=device.health)
        device.session = DeviceSession(
            device.identity,
            agent_version="0.1.0-e2e",
            boot_epoch=IdentityStore(state_dir).next_boot_epoch(),
            trust=trust,
            components=[device.component],
        )

    async def _serve(self, device: FleetDevice) -> None:
        assert self._stop is not None
        while not self._stop.is_set():
            try:
                await self._connected(device)
            except AgentError as exc:
                log.warning("%s: connection lost: %s", device.serial, exc)
            device.online = False
            await asyncio.sleep(0.5)

    async def _connected(self, device: FleetDevice) -> None:
        session, identity = device.session, device.identity
        assert session is not None and identity is not None and self._stop is not None
        transport = AsyncTransport(
            host=self.host,
            port=self.port,
            client_id=identity.mqtt_username,
            username=identity.mqtt_username,
            password=identity.mqtt_password,
            will=session.will(),
            keepalive=30,
        )
        await transport.connect()
        try:
            for topic_filter in session.subscriptions():
                await transport.subscribe(topic_filter)
            await _publish(transport, session.on_connected(now=int(time.time())))
            device.online, device.transport = True, transport
            ticker = asyncio.create_task(self._tick(device, transport))
            try:
                async for incoming in transport.messages():
                    self._record(device, incoming.topic, incoming.payload)
                    now = int(time.time())
                    out = session.on_message(incoming.topic, incoming.payload, now=now)
                    await _publish(transport, out)
            finally:
                ticker.cancel()
        finally:
            device.transport = None
            await transport.close()

    async def _tick(self, device: FleetDevice, transport: AsyncTransport) -> None:
        assert device.session is not None
        while True:
            await asyncio.sleep(TICK_SECONDS)
            await _publish(transport, device.session.tick(now=int(time.time())))

    @staticmethod
    def _record(device: FleetDevice, topic: str, payload: bytes) -> None:
        try:
            message = decode_message(payload)
        except ProtocolError:
            return
        at = time.time()
        if isinstance(message, FirmwareOffer):
            device.seen.offers.append((at, message.job_id))
        elif isinstance(message, FirmwareChunk):
            device.seen.chunks[message.job_id] += 1
        elif isinstance(message, FirmwareCancel):
            device.seen.cancels.append((at, message.job_id))
        elif isinstance(message, FirmwareReportAck):
            device.seen.acks += 1
        elif isinstance(message, ErrorReply) and topic.endswith("/down/error"):
            device.seen.errors.append(message)


async def _first(transport: AsyncTransport) -> bytes:
    async for incoming in transport.messages():
        return incoming.payload
    raise AgentError("the claim session closed without an answer")


async def _publish(transport: AsyncTransport, out: list[Outgoing]) -> None:
    for message in out:
        await transport.publish(message)
