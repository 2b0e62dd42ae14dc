"""Usage ingestion throughput (issue 5, "Benchmark"): the shared machinery.

Not a benchmark by itself (no ``NAME``): ``bench/usage_ingest_mosquitto.py``
and ``bench/usage_ingest_embedded.py`` run it on their broker, and one module
returns one :class:`~bench.harness.BenchResult`.

**Project**, per round: D simulated devices (real MQTT sessions with their own
credentials, in a separate process) publish M ``usage_batch`` messages each, R
records per message, on ``d/{id}/up/usage`` at QoS 1, with a fresh boot epoch
per round so every record is new. The hub side is the real thing:
:class:`~hub.mqtt.adapter.HubMqttClient` (paho, its dispatcher batching up to
500 messages), :class:`~hub.inbound.InboundRouter` (claimed-sender check, one
transaction per batch) and the telemetry plugin's
:class:`~hub.telemetry.ingest.UsageHandler` (dedup lookup, coverage, over-cap,
gaps, bulk insert), SQLite in WAL mode, acknowledgements published after the
commit (one ``usage_ack`` per device per hub batch, listing the results of
all that device's messages in the batch). The clock starts at the first
publish and stops when the **last record key of the round has been
acknowledged** to its device (the devices count distinct acknowledged keys,
not ack messages), so every record counted was stored durably, deduplicated
and acknowledged. After each round the database must hold exactly the round's
D x M x R new rows, and every result must say ``stored``, or the run fails.

**Baseline**, same broker, same run: D other devices publish the same number
of messages of the same size (same pre-encoded batches, another boot epoch)
the same way, and a bare paho subscriber (logged in as a hub principal,
subscribed to those D topics, QoS 1) only counts them. The clock stops at the
last arrival. The hub subscribes only to the project devices' topics and the
bare subscriber only to the baseline devices' topics, so neither sees the
other's traffic.

Rates are records per second (messages per second is that divided by R, so
the ratio is the same in both units; ``detail`` reports both). The target
ratio is 0.8 of the bare rate; the absolute target is 50,000 records per
second with batching on Mosquitto (``detail.records_per_second_target``).
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import logging
import multiprocessing
import pstats
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

import cbor2
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from bench.harness import Sample, rate
from hub.broker.passwords import hash_password, new_secret
from hub.clock import utc_now
from hub.entitlements import service as entitlements
from hub.entitlements.models import Activation
from hub.entitlements.schemas import AccountCreate, EntitlementCreate, FeatureCreate
from hub.inbound import BatchResult, InboundRouter
from hub.manifests.service import ManifestPolicy
from hub.mqtt.adapter import HubMqttClient
from hub.mqtt.outbound import Inbound
from hub.registry import service as registry
from hub.registry.claims import ClaimPolicy
from hub.registry.models import Device, DeviceCredential
from hub.registry.schemas import DeviceClassCreate, ProductCreate
from hub.registry.tenants import create_tenant
from hub.telemetry.ingest import UsageHandler
from hub.telemetry.models import UsageRecord
from protocols import topics
from protocols.messages import decode_message, encode_message
from protocols.usage_messages import RawUsageRecord, UsageAck, UsageBatch
from provisioning.signer import Ed25519Signer

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
HUB_USER = "hub-bench"
BARE_USER = "hub-bare"
MAX_PAYLOAD = 64 * 1024
METER = "api.calls"
TARGET_RATIO = 0.8
RECORDS_PER_SECOND_TARGET = 50_000
DEVICE_INFLIGHT = 100
_USAGE_SUFFIX = "/up/" + topics.UpKind.USAGE.value


@dataclass(frozen=True, slots=True)
class Shape:
    """Sizes of one benchmark: devices per side, messages per device, records per message."""

    devices: int
    messages: int
    records: int

    @property
    def total_messages(self) -> int:
        """Messages per round."""
        return self.devices * self.messages

    @property
    def total_records(self) -> int:
        """Records per round."""
        return self.total_messages * self.records


class Broker(Protocol):
    """A broker the benchmark can start with the given credentials."""

    port: int

    def start(self, credentials: dict[str, str]) -> None:
        """Start with ``username -> password`` logins (devices, hub, bare)."""
        ...

    def stop(self) -> None:
        """Stop."""
        ...


# ------------------------------------------------------------------ data


@dataclass(frozen=True, slots=True)
class Seeded:
    """The seeded tenant: project devices (activated) and baseline devices."""

    tenant_id: str
    project: dict[str, str]  # device id -> MQTT password
    baseline: dict[str, str]


def seed(factory: sessionmaker[Session], devices: int, now: datetime) -> Seeded:
    """A tenant, a product with a metered feature, an account, a perpetual entitlement
    activated on the ``devices`` project devices, and ``devices`` baseline devices.

    Devices, credentials and activations are bulk inserts (the services create
    them one by one); the catalogue goes through the services.
    """
    with factory() as s:
        tenant, _ = create_tenant(s, f"bench-usage-{uuid.uuid4().hex[:8]}", now, actor="bench")
        s.flush()
        who: dict[str, Any] = {"tenant_id": tenant.id, "actor": "bench", "now": now}
        device_class = registry.create_device_class(s, **who, data=DeviceClassCreate(
            name="meter", vendor_id=uuid.uuid4(), class_id=uuid.uuid4(),
        ))  # fmt: skip
        product = registry.create_product(s, **who, data=ProductCreate(sku="M", name="meter"))
        feature = FeatureCreate(key=METER, kind="metered", cap_per_period=10**12, period="month")
        entitlements.create_feature(s, **who, product_id=product.id, data=feature)
        account = entitlements.create_account(s, **who, data=AccountCreate(name="Acme"))
        s.flush()
        ent = entitlements.create_entitlement(s, **who, data=EntitlementCreate(
            account_id=account.id, product_id=product.id, license_model="perpetual",
            quantity=devices,
        )).value  # fmt: skip
        project = {registry.new_device_id(): new_secret() for _ in range(devices)}
        baseline = {registry.new_device_id(): new_secret() for _ in range(devices)}
        everyone = {**project, **baseline}
        s.execute(insert(Device), [
            {"id": d, "tenant_id": tenant.id, "serial": f"bench-{i:05d}",
             "device_class_id": device_class.id, "tags": [], "status": "claimed",
             "claimed_at": now, "created_at": now}
            for i, d in enumerate(everyone)
        ])  # fmt: skip
        s.execute(insert(DeviceCredential), [
            {"device_id": d, "username": d, "password_hash": hash_password(p), "created_at": now}
            for d, p in everyone.items()
        ])  # fmt: skip
        s.execute(insert(Activation), [
            {"id": str(uuid.uuid4()), "tenant_id": tenant.id, "entitlement_id": ent.id,
             "device_id": d, "activated_at": now - timedelta(days=1)}
            for d in project
        ])  # fmt: skip
        s.commit()
        return Seeded(tenant.id, project, baseline)


def encode_batches(device_id: str, epoch: int, shape: Shape, now: int) -> list[bytes]:
    """One device's ``usage_batch`` payloads for a round (``epoch`` makes every key new)."""
    payloads = []
    for message in range(shape.messages):
        first = message * shape.records + 1
        records = tuple(
            RawUsageRecord((epoch, seq, METER, 1.25 if seq % 4 else 3, now - seq % 600))
            for seq in range(first, first + shape.records)
        )
        payloads.append(encode_message(UsageBatch(records=records)))
    return payloads


# ------------------------------------------------------------------ simulated devices


class _SimRound:
    """What the simulated devices count in one round.

    In ``ack`` rounds the count is of distinct record keys of the round's
    epoch answered by ``usage_ack`` messages (the hub answers a device's
    messages of one hub batch in one ack, so acks are not one per message);
    in ``puback`` rounds (and for the bare subscriber) it is of messages.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.target = 0
        self.epoch = 0
        self.count = 0
        self.last = 0.0
        self.last_ack = b""
        self.keys: set[tuple[str, int]] = set()
        self.odd: list[Any] = []  # results of the round that are not "stored"

    def arm(self, target: int, epoch: int = 0) -> None:
        with self.lock:
            self.target, self.epoch, self.count, self.last = target, epoch, 0, 0.0
            self.last_ack, self.keys, self.odd = b"", set(), []
            self.done.clear()

    def hit(self) -> None:
        with self.lock:
            self.count += 1
            self._check_done()

    def acked(self, device_id: str, payload: bytes) -> None:
        # cbor2 directly (C): a full decode_message of a 1,000-result ack costs
        # ~1 ms of this process's CPU; the parent checks the last ack's schema.
        results = cbor2.loads(payload)[2]
        with self.lock:
            self.last_ack = payload
            for epoch, seq, code in results:
                if epoch != self.epoch:
                    continue
                self.keys.add((device_id, seq))
                if code != "stored" and len(self.odd) < 10:
                    self.odd.append([device_id, epoch, seq, code])
            self.count = len(self.keys)
            self._check_done()

    def _check_done(self) -> None:
        if self.count >= self.target and not self.done.is_set():
            self.last = time.monotonic()
            self.done.set()


def _sim_connect(device_id: str, password: str, port: int, state: _SimRound) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv311)
    client.username_pw_set(device_id, password)
    client.max_inflight_messages_set(DEVICE_INFLIGHT)
    connected = threading.Event()
    subscribed = threading.Event()
    client.on_connect = lambda *_a: connected.set()
    client.on_subscribe = lambda *_a: subscribed.set()
    client.on_publish = lambda *_a: state.hit() if state_mode[0] == "puback" else None
    client.on_message = lambda _c, _u, m: state.acked(device_id, bytes(m.payload))
    client.connect(HOST, port, keepalive=60)
    client.loop_start()
    if not connected.wait(30):
        raise RuntimeError(f"simulated device {device_id} could not connect")
    client.subscribe(topics.device_down(device_id, topics.DownKind.USAGE_ACK), qos=1)
    if not subscribed.wait(30):
        raise RuntimeError(f"simulated device {device_id} could not subscribe")
    return client


state_mode = ["ack"]  # the simulator process's round mode: "ack" (project) or "puback"


def _sim_main(conn: Connection, port: int, sides: dict[str, dict[str, str]], shape: Shape) -> None:
    """The simulated devices: one paho session per device, in one process.

    Commands: ``("round", side, epoch, mode)`` encodes the side's payloads for
    ``epoch`` (untimed) and answers ``("armed",)``; ``("go",)`` publishes them
    all and answers ``("done", t_first_publish, t_last, last_ack, odd)`` once
    everything was acknowledged (``mode="ack"``: every record key of the round
    answered by a ``usage_ack``, ``odd`` the first results that are not
    ``stored``; ``"puback"``: every message's PUBACK). ``("stop",)`` ends the
    process.
    """
    state = _SimRound()
    clients = {
        device_id: _sim_connect(device_id, password, port, state)
        for side in sides.values()
        for device_id, password in side.items()
    }
    conn.send(("ready",))
    plan: list[tuple[mqtt.Client, str, bytes]] = []
    try:
        while True:
            command = conn.recv()
            if command[0] == "stop":
                return
            if command[0] == "round":
                _, side, epoch, mode = command
                state_mode[0] = mode
                plan = _plan(clients, sides[side], epoch, shape)
                state.arm(len(plan) * (shape.records if mode == "ack" else 1), epoch)
                conn.send(("armed",))
                continue
            t0 = time.monotonic()
            for client, topic, payload in plan:
                client.publish(topic, payload, qos=1)
            if not state.done.wait(600):
                conn.send(("timeout", state.count))
                continue
            conn.send(("done", t0, state.last, state.last_ack, state.odd))
    finally:
        for client in clients.values():
            client.disconnect()
            client.loop_stop()


def _plan(
    clients: dict[str, mqtt.Client], side: dict[str, str], epoch: int, shape: Shape
) -> list[tuple[mqtt.Client, str, bytes]]:
    """Every publish of a round, interleaved across devices."""
    now = int(time.time())
    per_device = {d: encode_batches(d, epoch, shape, now) for d in side}
    return [
        (clients[d], topics.device_up(d, topics.UpKind.USAGE), per_device[d][i])
        for i in range(shape.messages)
        for d in side
    ]


class Simulator:
    """The simulated devices' process, driven over a pipe."""

    def __init__(self, port: int, sides: dict[str, dict[str, str]], shape: Shape) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_sim_main, args=(child, port, sides, shape), name="bench-usage-devices",
            daemon=True,
        )  # fmt: skip
        self._process.start()
        child.close()
        self._expect("ready", 180)

    def round(self, side: str, epoch: int, mode: str) -> None:
        """Prepare a round (payloads encoded, counters armed)."""
        self._conn.send(("round", side, epoch, mode))
        self._expect("armed", 120)

    def go(self, timeout: float) -> tuple[float, float, bytes, list[Any]]:
        """Publish the prepared round.

        Returns:
            ``(t_first_publish, t_last, last_ack_payload, results_not_stored)``.
        """
        self._conn.send(("go",))
        reply = self._recv(timeout)
        if reply[0] != "done":
            raise RuntimeError(f"simulated devices: {reply!r}")
        return float(reply[1]), float(reply[2]), bytes(reply[3]), list(reply[4])

    def stop(self) -> None:
        """Stop the process (by its own handle); kill it if it does not stop."""
        with contextlib.suppress(OSError, BrokenPipeError):
            self._conn.send(("stop",))
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)

    def _expect(self, what: str, timeout: float) -> None:
        reply = self._recv(timeout)
        if reply[0] != what:
            raise RuntimeError(f"simulated devices answered {reply!r}, expected {what!r}")

    def _recv(self, timeout: float) -> tuple[Any, ...]:
        if not self._conn.poll(timeout):
            raise RuntimeError(f"simulated devices silent for {timeout:.0f}s")
        reply: tuple[Any, ...] = self._conn.recv()
        return reply


# ------------------------------------------------------------------ hub side


class CountingRouter(InboundRouter):
    """The hub's router, counting committed usage messages (and optionally profiling)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lock = threading.Lock()
        self.committed = 0
        self.batches = 0
        self.cpu = 0.0  # dispatcher thread CPU seconds inside handle_batch
        self.profiler: cProfile.Profile | None = None

    def handle_batch(self, batch: Sequence[Inbound]) -> BatchResult:
        """Handle and commit as the hub does, then count the batch's usage messages."""
        profiler = self.profiler
        started = time.thread_time()
        if profiler is not None:
            profiler.enable()
        try:
            result = super().handle_batch(batch)
        finally:
            if profiler is not None:
                profiler.disable()
        spent = time.thread_time() - started
        with self.lock:
            self.cpu += spent
            self.committed += sum(1 for m in batch if m.topic.endswith(_USAGE_SUFFIX))
            self.batches += 1
        return result


class BareSubscriber:
    """The baseline: a bare paho client that only counts messages."""

    def __init__(self, port: int, password: str, device_ids: Sequence[str]) -> None:
        self._state = _SimRound()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=BARE_USER,
            protocol=mqtt.MQTTv311,
        )  # fmt: skip
        self._client.username_pw_set(BARE_USER, password)
        subscribed = threading.Event()
        connected = threading.Event()
        self._client.on_connect = lambda *_a: connected.set()
        self._client.on_subscribe = lambda *_a: subscribed.set()
        self._client.on_message = lambda *_a: self._state.hit()
        self._client.connect(HOST, port, keepalive=60)
        self._client.loop_start()
        if not connected.wait(30):
            raise RuntimeError("bare subscriber could not connect")
        self._client.subscribe([(topics.device_up(d, topics.UpKind.USAGE), 1) for d in device_ids])
        if not subscribed.wait(30):
            raise RuntimeError("bare subscriber could not subscribe")

    def arm(self, n: int) -> None:
        """Expect ``n`` messages."""
        self._state.arm(n)

    def wait(self, timeout: float) -> float:
        """``time.monotonic()`` of the last expected message."""
        if not self._state.done.wait(timeout):
            raise RuntimeError(f"bare subscriber got {self._state.count} of {self._state.target}")
        return self._state.last

    def stop(self) -> None:
        """Disconnect."""
        self._client.disconnect()
        self._client.loop_stop()


@dataclass
class UsageBench:
    """Broker, database, hub client, bare subscriber and simulated devices of one run."""

    broker: Broker
    shape: Shape
    workdir: Path
    say: Callable[[str], None]
    timeout: float = 300.0

    def start(self) -> None:
        """Seed, start the broker, connect the hub, the bare subscriber and the devices."""
        self._cleanup: list[Callable[[], None]] = []
        from hub.db.engine import make_engine, make_session_factory  # noqa: PLC0415
        from hub.db.migrate import upgrade  # noqa: PLC0415

        url = f"sqlite:///{self.workdir / 'hub.db'}"
        upgrade(url)
        engine = make_engine(url)
        self._cleanup.append(engine.dispose)
        self.factory = make_session_factory(engine)
        self.seeded = seed(self.factory, self.shape.devices, utc_now())
        hub_password, bare_password = new_secret(), new_secret()
        self.broker.start({
            HUB_USER: hub_password, BARE_USER: bare_password,
            **self.seeded.project, **self.seeded.baseline,
        })  # fmt: skip
        self._cleanup.append(self.broker.stop)
        self._start_hub(hub_password)
        self.bare = BareSubscriber(self.broker.port, bare_password, list(self.seeded.baseline))
        self._cleanup.append(self.bare.stop)
        self.sim = Simulator(
            self.broker.port,
            {"project": self.seeded.project, "baseline": self.seeded.baseline},
            self.shape,
        )
        self._cleanup.append(self.sim.stop)
        self.epoch = 0

    def _start_hub(self, password: str) -> None:
        signer = Ed25519Signer.generate()
        self.handler = UsageHandler()
        self.router = CountingRouter(
            session_factory=self.factory,
            claim_policy=ClaimPolicy(anchors=(signer.anchor("manifest"),), skew_seconds=300),
            manifest_policy=ManifestPolicy(kid=signer.kid, sign=signer.sign),
            clock=utc_now,
            max_payload_bytes=MAX_PAYLOAD,
            handlers=[self.handler],
        )
        filters = tuple(topics.device_up(d, topics.UpKind.USAGE) for d in self.seeded.project)
        self.hub = HubMqttClient(
            host=HOST, port=self.broker.port, client_id=HUB_USER,
            username=HUB_USER, password=password, router=self.router, filters=filters,
        )  # fmt: skip
        self.hub.start()
        self._cleanup.append(self.hub.stop)

    def stop(self) -> None:
        """Tear everything down, newest first."""
        while self._cleanup:
            step = self._cleanup.pop()
            with contextlib.suppress(Exception):
                step()

    def _stored(self) -> int:
        with self.factory() as s:
            return int(
                s.scalar(
                    select(func.count())
                    .select_from(UsageRecord)
                    .where(UsageRecord.tenant_id == self.seeded.tenant_id)
                )
                or 0
            )

    def project_round(self) -> Sample:
        """Every project device sends its batches; timed until the last ack arrived."""
        self.epoch += 1
        before, committed, batches = self._stored(), self.router.committed, self.router.batches
        self.sim.round("project", self.epoch, "ack")
        cpu, handler_cpu = time.process_time(), self.router.cpu
        t0, t_end, last_ack, odd = self.sim.go(self.timeout)
        cpu, handler_cpu = time.process_time() - cpu, self.router.cpu - handler_cpu
        stored = self._stored() - before
        if stored != self.shape.total_records:
            raise RuntimeError(f"{stored} records stored, expected {self.shape.total_records}")
        if odd:
            raise RuntimeError(f"records answered other than 'stored': {odd!r}")
        ack = decode_message(last_ack)
        if not isinstance(ack, UsageAck) or {r.code for r in ack.results} != {"stored"}:
            raise RuntimeError(f"unexpected last ack: {ack!r}")
        seconds = t_end - t0
        detail = {
            "seconds": seconds,
            "messages_per_second": rate(self.shape.total_messages, seconds),
            "records_per_second": rate(self.shape.total_records, seconds),
            "hub_batches": self.router.batches - batches,
            "messages_committed": self.router.committed - committed,
            # This process is idle but for the hub client during the round:
            # its CPU is the dispatcher's (router) plus paho's network thread
            # and the publishing of the replies (the rest).
            "hub_cpu_seconds": cpu,
            "router_cpu_seconds": handler_cpu,
        }
        return Sample(rate(self.shape.total_records, seconds), _rounded(detail))

    def baseline_round(self) -> Sample:
        """The baseline devices send the same volume; the bare subscriber counts it."""
        self.epoch += 1
        self.sim.round("baseline", self.epoch, "puback")
        self.bare.arm(self.shape.total_messages)
        cpu = time.process_time()
        t0, t_pubacks, _, _ = self.sim.go(self.timeout)
        t_last = self.bare.wait(self.timeout)
        cpu = time.process_time() - cpu
        seconds = max(t_last, t_pubacks) - t0
        detail = {
            "seconds": seconds,
            "bare_cpu_seconds": cpu,  # the bare subscriber's paho thread
            "messages_per_second": rate(self.shape.total_messages, seconds),
            "records_per_second": rate(self.shape.total_records, seconds),
        }
        return Sample(rate(self.shape.total_records, seconds), _rounded(detail))

    def profile_round(self, directory: Path, name: str) -> dict[str, Any]:
        """One more project round with the dispatcher thread under cProfile."""
        directory.mkdir(parents=True, exist_ok=True)
        self.router.profiler = cProfile.Profile()
        try:
            sample = self.project_round()
        finally:
            profiler, self.router.profiler = self.router.profiler, None
        assert profiler is not None
        profiler.dump_stats(directory / f"{name}_dispatch.pstats")
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(40)
        (directory / f"{name}_dispatch.txt").write_text(text.getvalue())
        return {"profiled_rate": sample.value, "detail": dict(sample.detail)}


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in values.items()}
