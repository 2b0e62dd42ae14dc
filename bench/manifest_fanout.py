"""Manifest fan-out after a product change (issue 3, "Benchmark").

A product's ``users`` limit changes; every device with an open activation of
the product (N of them) needs a new manifest. Measured end to end, in devices
per second:

1. the product change (``update_feature``, one transaction) and the affected
   device ids;
2. :meth:`ManifestPublisher.devices_changed`: ``hub.manifests.service.issue``
   over all N devices in one transaction (effective features, lease, sequence,
   Ed25519 signature, delivery state), commit, then
   :meth:`HubMqttClient.publish` at QoS 1 through the hub's in-flight window;
3. Mosquitto delivers every manifest to the simulated devices, which verify it
   with the real trust core (``device_agent.trust.accept_manifest``) and publish
   a real ``ManifestAck`` on ``d/{id}/up/manifest_ack`` at QoS 1;
4. the hub's own MQTT client and ``InboundRouter`` record the acks; the clock
   stops when the batch holding the N-th ack has **committed**. After each run
   the database is checked: all N rows ``acknowledged`` at the new sequence.

Baseline, same broker, same run: a bare paho client publishes N payloads of
the same sizes to the same N topics at QoS 1 with the same in-flight window
(1,000: a semaphore plus ``max_inflight_messages_set``); the same simulator
clients only count them. The clock stops when the last message has arrived
and every PUBACK is in.

Simulated devices: one separate process with a few paho connections (default
4), each subscribed to its share of the N explicit ``d/{id}/down/manifest``
topics (not a wildcard), logged in as a bench user whose ACL may read
``d/+/down/#`` and write ``d/+/up/#``. Ten thousand real device connections
would measure the simulator rather than the hub on two cores (paho needs a
thread per client; see the fleet simulator for connection scale).
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import logging
import os
import pstats
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import Engine, event, func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from bench._fanout_devices import SUBSCRIBE_CHUNK as _SUBSCRIBE_CHUNK
from bench._fanout_devices import Simulator
from bench.harness import BenchResult, Sample, interleave, median, rate
from hub.broker.passwords import hash_password, new_secret
from hub.clock import utc_now
from hub.db.engine import make_engine, make_session_factory
from hub.db.migrate import upgrade
from hub.entitlements import service as entitlements
from hub.entitlements.models import Activation
from hub.entitlements.schemas import (
    AccountCreate,
    EntitlementCreate,
    FeatureCreate,
    FeatureUpdate,
)
from hub.inbound import BatchResult, InboundRouter
from hub.manifests.models import DeviceManifest
from hub.manifests.publisher import ManifestPublisher
from hub.manifests.service import ManifestPolicy
from hub.mqtt.adapter import INFLIGHT_WINDOW, PAHO_INFLIGHT_LIMIT, HubMqttClient
from hub.mqtt.outbound import Inbound, Outbound
from hub.registry import service as registry
from hub.registry.claims import ClaimPolicy
from hub.registry.models import Device, DeviceCredential
from hub.registry.schemas import DeviceClassCreate, ProductCreate
from hub.registry.tenants import create_tenant
from protocols import topics
from provisioning.signer import Ed25519Signer

log = logging.getLogger(__name__)

NAME = "manifest_fanout"
UNIT = "devices/s"
TARGET_RATIO = 0.5
FULL_DEVICES = 10_000
QUICK_DEVICES = 1_000
SIM_PROCESSES = 2
SIM_CLIENTS = 2  # per process
HOST = "127.0.0.1"
HUB_USER = "hub-bench"
SIM_USER = "sim-bench"
MAX_PAYLOAD = 64 * 1024
SUBSCRIBE_CHUNK = _SUBSCRIBE_CHUNK  # topics per SUBSCRIBE (other benchmarks reuse it)
_ACK_SUFFIX = "/up/" + topics.UpKind.MANIFEST_ACK.value


def mosquitto_binary() -> str:
    """The Mosquitto to run: ``$BENCH_MOSQUITTO``, else ``/usr/sbin/mosquitto``, else PATH."""
    configured = os.environ.get("BENCH_MOSQUITTO")
    if configured:
        return configured
    if Path("/usr/sbin/mosquitto").exists():
        return "/usr/sbin/mosquitto"
    return shutil.which("mosquitto") or "mosquitto"


# ------------------------------------------------------------------ broker


def free_port(host: str = HOST) -> int:
    """A port nobody listens on right now (the kernel's choice)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class BenchBroker:
    """A Mosquitto child process with the hub's tuning and a bench ACL.

    The global settings follow ``hub.broker.mosquitto`` (queue 100,000 messages
    per client, in-flight 1,000, payload cap, TCP_NODELAY, no persistence, no
    retained messages). The ACL differs: the hub user as generated, plus one
    simulator user that may read every device's down topics and write every
    device's up topics (it stands in for the N devices).
    """

    def __init__(self, directory: Path, binary: str) -> None:
        self.directory = directory
        self.binary = binary
        self.port = 0
        self.hub_password = new_secret()
        self.sim_password = new_secret()
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Write the files, start Mosquitto, wait until it accepts connections."""
        self.port = free_port()
        passwords = self.directory / "passwords"
        acl = self.directory / "acl"
        config = self.directory / "mosquitto.conf"
        passwords.write_text(
            f"{HUB_USER}:{hash_password(self.hub_password)}\n"
            f"{SIM_USER}:{hash_password(self.sim_password)}\n"
        )
        passwords.chmod(0o600)
        acl.write_text(
            f"user {HUB_USER}\ntopic read d/+/up/#\ntopic write d/+/down/#\n\n"
            f"user {SIM_USER}\ntopic read d/+/down/#\ntopic write d/+/up/#\n"
        )
        lines = [
            "per_listener_settings true",
            "persistence false",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "connection_messages false",
            f"message_size_limit {MAX_PAYLOAD}",
            f"max_packet_size {MAX_PAYLOAD + 8192}",
            "max_queued_messages 100000",
            "max_inflight_messages 1000",
            "set_tcp_nodelay true",
            "retain_available false",
            *(["user root"] if os.geteuid() == 0 else []),
            f"listener {self.port} {HOST}",
            "allow_anonymous false",
            f"password_file {passwords}",
            f"acl_file {acl}",
        ]
        config.write_text("\n".join(lines) + "\n")
        log_file = (self.directory / "mosquitto.log").open("ab")
        with log_file:
            self._process = subprocess.Popen(
                [self.binary, "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log_tail()}")
            with contextlib.suppress(OSError):
                socket.create_connection((HOST, self.port), timeout=0.2).close()
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto not listening on {HOST}:{self.port}")

    def stop(self) -> None:
        """SIGTERM our own child (by PID), SIGKILL after 5 s."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def cpu_seconds(self) -> float:
        """User plus system CPU seconds the broker process has used (0 if unknown)."""
        if self._process is None:
            return 0.0
        try:
            fields = Path(f"/proc/{self._process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        # After the command name: state is field 3, utime and stime are fields 14 and 15.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self) -> str:
        """The end of the broker's log."""
        path = self.directory / "mosquitto.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


# ------------------------------------------------------------------ data


@dataclass(frozen=True, slots=True)
class Seeded:
    """What the fan-out needs to know about the seeded database."""

    tenant_id: str
    product_id: str
    feature_id: str
    device_ids: list[str]


def seed(factory: sessionmaker[Session], n: int, now: datetime) -> Seeded:
    """A tenant, a product with three features, an account, a perpetual
    entitlement and ``n`` claimed devices activated on it.

    The catalogue goes through the services; the devices, credentials and
    activations are bulk inserts (the services create them one by one).
    """
    with factory() as s:
        tenant, _ = create_tenant(s, f"bench-{uuid.uuid4().hex[:8]}", now, actor="bench")
        s.flush()
        device_class = registry.create_device_class(
            s, tenant_id=tenant.id, actor="bench", now=now,
            data=DeviceClassCreate(
                name="gateway",
                vendor_id="fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe",  # type: ignore[arg-type]
                class_id="1492af14-2569-5e48-bf42-9b2d51f2ab45",  # type: ignore[arg-type]
            ),
        )  # fmt: skip
        product = registry.create_product(
            s, tenant_id=tenant.id, actor="bench", now=now,
            data=ProductCreate(sku="GW-BENCH", name="gateway"),
        )  # fmt: skip
        features = {}
        for body in (
            FeatureCreate(key="vpn", kind="flag"),
            FeatureCreate(key="users", kind="limit", default_limit=5),
            FeatureCreate(key="api.calls", kind="metered", cap_per_period=1000, period="month"),
        ):
            feature = entitlements.create_feature(
                s, tenant_id=tenant.id, actor="bench", now=now, product_id=product.id, data=body
            )
            features[body.key] = feature.id
        account = entitlements.create_account(
            s, tenant_id=tenant.id, actor="bench", now=now, data=AccountCreate(name="Acme")
        )
        s.flush()
        ent = entitlements.create_entitlement(
            s, tenant_id=tenant.id, actor="bench", now=now,
            data=EntitlementCreate(
                account_id=account.id, product_id=product.id,
                license_model="perpetual", quantity=n,
            ),
        ).value  # fmt: skip
        device_ids = [registry.new_device_id() for _ in range(n)]
        # One credential hash for all: the bench's devices never log in themselves.
        password_hash = hash_password(new_secret())
        s.execute(
            insert(Device),
            [
                {
                    "id": d,
                    "tenant_id": tenant.id,
                    "serial": f"bench-{i:06d}",
                    "device_class_id": device_class.id,
                    "tags": [],
                    "status": "claimed",
                    "claimed_at": now,
                    "created_at": now,
                    "online": True,
                    "last_seen_at": now,
                }
                for i, d in enumerate(device_ids)
            ],
        )
        s.execute(
            insert(DeviceCredential),
            [
                {"device_id": d, "username": d, "password_hash": password_hash, "created_at": now}
                for d in device_ids
            ],
        )
        s.execute(
            insert(Activation),
            [
                {
                    "id": str(uuid.uuid4()),
                    "tenant_id": tenant.id,
                    "entitlement_id": ent.id,
                    "device_id": d,
                    "activated_at": now,
                }
                for d in device_ids
            ],
        )
        s.commit()
        return Seeded(tenant.id, product.id, features["users"], device_ids)


# ------------------------------------------------------------------ hub side


class AckCountingRouter(InboundRouter):
    """The hub's router, noting when the acks of a round have committed.

    Optionally profiles each batch (the dispatcher thread) with cProfile.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._lock = threading.Lock()
        self._target = 0
        self._count = 0
        self.batches = 0
        self.done = threading.Event()
        self.done_at = 0.0
        self.profiler: cProfile.Profile | None = None

    def arm(self, target: int) -> None:
        """Expect ``target`` manifest acks."""
        with self._lock:
            self._target, self._count, self.done_at = target, 0, 0.0
            self.batches = 0
            self.done.clear()

    def handle_batch(self, batch: Sequence[Inbound]) -> BatchResult:
        """Handle and commit as the hub does, then count the batch's acks."""
        profiler = self.profiler
        if profiler is not None:
            profiler.enable()
        try:
            result = super().handle_batch(batch)
        finally:
            if profiler is not None:
                profiler.disable()
        acks = sum(1 for m in batch if m.topic.endswith(_ACK_SUFFIX))
        with self._lock:
            self.batches += 1
            self._count += acks
            if self._target and self._count >= self._target and not self.done.is_set():
                self.done_at = time.monotonic()
                self.done.set()
        return result


@dataclass
class StatementCounter:
    """Counts SQL statements per thread name while attached to an engine."""

    by_thread: Counter[str] = field(default_factory=Counter)

    def __call__(self, *_args: Any, **_kwargs: Any) -> None:
        self.by_thread[threading.current_thread().name] += 1


@dataclass
class FanoutConfig:
    """Knobs of one fan-out benchmark."""

    devices: int
    repeats: int
    sim_processes: int = SIM_PROCESSES
    sim_clients: int = SIM_CLIENTS
    profile_dir: Path | None = None
    timeout: float = 300.0


class FanoutBench:
    """Broker, database, hub client, bare client and simulated devices for one run."""

    def __init__(self, config: FanoutConfig, workdir: Path, say: Callable[[str], None]) -> None:
        self.config = config
        self.workdir = workdir
        self.say = say
        self.broker = BenchBroker(workdir, mosquitto_binary())
        self.signer = Ed25519Signer.generate()
        self.sign_seconds = 0.0
        self.limit = 5
        self.sizes: list[int] = []
        self._publish_marks: list[float] = []
        self._cleanup: list[Callable[[], None]] = []

    # -- setup / teardown

    def start(self) -> None:
        """Start broker, seed the database, connect the hub and the devices."""
        n = self.config.devices
        self.broker.start()
        self._cleanup.append(self.broker.stop)
        url = f"sqlite:///{self.workdir / 'hub.db'}"
        upgrade(url)
        self.engine: Engine = make_engine(url)
        self._cleanup.append(self.engine.dispose)
        self.factory = make_session_factory(self.engine)
        started = time.monotonic()
        self.seeded = seed(self.factory, n, utc_now())
        self.say(f"  seeded {n:,} claimed, activated devices in {time.monotonic() - started:.1f}s")

        def timed_sign(data: bytes) -> bytes:
            t = time.perf_counter()
            try:
                return self.signer.sign(data)
            finally:
                self.sign_seconds += time.perf_counter() - t

        policy = ManifestPolicy(kid=self.signer.kid, sign=timed_sign)
        self.router = AckCountingRouter(
            session_factory=self.factory,
            claim_policy=ClaimPolicy(anchors=(self.signer.anchor("manifest"),), skew_seconds=300),
            manifest_policy=policy,
            clock=utc_now,
            max_payload_bytes=MAX_PAYLOAD,
        )
        self.publisher = ManifestPublisher(
            session_factory=self.factory,
            policy=policy,
            clock=utc_now,
            publish=self._publish,
            seat_timeout=timedelta(seconds=90),
        )
        self.hub_id = f"{HUB_USER}-{secrets.token_hex(4)}"
        self.hub = HubMqttClient(
            host=HOST,
            port=self.broker.port,
            client_id=self.hub_id,
            username=HUB_USER,
            password=self.broker.hub_password,
            router=self.router,
            filters=(topics.HUB_UP_FILTER,),
            on_acknowledged=self.publisher.delivered,
        )
        self.hub.start()
        self._cleanup.append(self.hub.stop)
        self.bare = BarePublisher(self.broker.port, self.broker.hub_password)
        self._cleanup.append(self.bare.stop)
        self.sim = Simulator(
            self.broker.port,
            (SIM_USER, self.broker.sim_password),
            self.seeded.device_ids,
            (self.signer.kid, self.signer.public_key_bytes()),
            processes=self.config.sim_processes,
            clients_per_process=self.config.sim_clients,
        )
        self._cleanup.append(self.sim.stop)
        self.topics = [
            topics.device_down(d, topics.DownKind.MANIFEST) for d in self.seeded.device_ids
        ]

    def stop(self) -> None:
        """Tear everything down, newest first, none of it for longer than 20 s."""
        while self._cleanup:
            step = self._cleanup.pop()
            with contextlib.suppress(Exception):
                _bounded(step, 20.0, f"stopping {getattr(step, '__qualname__', step)}")

    # -- the project

    def _publish(self, outbound: list[Outbound]) -> None:
        # Large fan-outs publish in chunks (one call per committed chunk).
        self._publish_marks.append(time.monotonic())
        self.sizes.extend(len(o.payload) for o in outbound)
        self.hub.publish(outbound)
        self._publish_marks.append(time.monotonic())

    def project_round(self) -> Sample:
        """One product change, fanned out and acknowledged by all N devices."""
        n = self.config.devices
        self.limit += 1
        self.sign_seconds = 0.0
        self._publish_marks.clear()
        self.sizes = []
        self.sim.arm("device")
        self.router.arm(n)
        load = os.getloadavg()[0]
        cpu0 = self._cpu()
        t0 = time.monotonic()
        with self.factory() as s:
            outcome = entitlements.update_feature(
                s,
                tenant_id=self.seeded.tenant_id,
                actor="bench",
                now=utc_now(),
                product_id=self.seeded.product_id,
                feature_id=self.seeded.feature_id,
                data=FeatureUpdate(default_limit=self.limit),
            )
            s.commit()
        t_change = time.monotonic()
        if len(outcome.device_ids) != n:
            raise RuntimeError(f"the change affects {len(outcome.device_ids)} devices, not {n}")
        issue_cpu = _bounded(
            lambda: self.publisher.devices_changed(outcome.device_ids),
            self.config.timeout,
            "issuing and publishing the manifests (a deadlocked HubMqttClient.publish?)",
        )
        if not self.router.done.wait(self.config.timeout):
            raise RuntimeError(f"not all {n} acks reached the hub in {self.config.timeout:.0f}s")
        t_end = self.router.done_at
        cpu = self._cpu(cpu0)
        t_sim_last, sim_stats = self.sim.wait(self.config.timeout)
        if sim_stats.get("accepted", 0) != n:
            raise RuntimeError(f"devices did not accept every manifest: {sim_stats}")
        acknowledged = self._acknowledged_at_current_seq()
        if acknowledged != n:
            raise RuntimeError(f"{acknowledged} of {n} manifests acknowledged in the database")
        t_pub0, t_pub1 = self._publish_marks[0], self._publish_marks[-1]
        marks = self._publish_marks
        publishing = sum(marks[i + 1] - marks[i] for i in range(0, len(marks), 2))
        phases = {
            "product_change_s": t_change - t0,
            "issue_first_chunk_s": t_pub0 - t_change,
            "sign_s": self.sign_seconds,
            "issue_and_publish_s": t_pub1 - t_pub0,
            "publish_calls": len(self._publish_marks) // 2,
            "in_publish_s": publishing,  # inside HubMqttClient.publish (window waits included)
            "issuing_s": t_pub1 - t_change - publishing,  # issue() and commit, chunk by chunk
            "acks_after_publish_s": t_end - t_pub1,
            "last_device_ack_sent_s": t_sim_last - t0,
            "total_s": t_end - t0,
            "payload_bytes_mean": sum(self.sizes) / len(self.sizes),
            **cpu,
            "hub_issue_thread_cpu_s": issue_cpu,
            "ack_batches": self.router.batches,
            "load_avg_1m": load,
            "devices_cpu_s": self.sim.cpu_seconds,
        }
        return Sample(rate(n, t_end - t0), {k: round(v, 3) for k, v in phases.items()})

    def _cpu(self, since: dict[str, float] | None = None) -> dict[str, float]:
        """CPU seconds of this (the hub's) process, of its long-lived threads (paho's
        network thread, the dispatcher) and of the broker, minus ``since``."""
        now = {
            "hub_cpu_s": time.process_time(),
            "hub_network_thread_cpu_s": _thread_cpu_seconds(f"paho-mqtt-client-{self.hub_id}"),
            "hub_dispatch_thread_cpu_s": _thread_cpu_seconds("hub-dispatch"),
            "broker_cpu_s": self.broker.cpu_seconds(),
        }
        if since is None:
            return now
        return {key: value - since[key] for key, value in now.items()}

    def _acknowledged_at_current_seq(self) -> int:
        with self.factory() as s:
            seq = s.scalar(select(func.max(DeviceManifest.seq)))
            return int(
                s.scalar(
                    select(func.count())
                    .select_from(DeviceManifest)
                    .where(
                        DeviceManifest.delivery_state == "acknowledged",
                        DeviceManifest.seq == seq,
                    )
                )
                or 0
            )

    # -- the baseline

    def baseline_round(self) -> Sample:
        """N same-size QoS 1 publishes through a bare paho client, counted by the sim."""
        n = self.config.devices
        payloads = [os.urandom(size) for size in self.sizes]
        self.sim.arm("count")
        load = os.getloadavg()[0]
        cpu0 = self._cpu()
        t0 = time.monotonic()
        t_pubacks = self.bare.publish_all(self.topics, payloads, self.config.timeout)
        t_last, stats = self.sim.wait(self.config.timeout)
        cpu = self._cpu(cpu0)
        if stats.get("received", 0) != n:
            raise RuntimeError(f"bare subscriber counted {stats}, expected {n}")
        t_end = max(t_pubacks, t_last)
        detail = {
            "last_received_s": t_last - t0,
            "all_pubacks_s": t_pubacks - t0,
            "load_avg_1m": load,
            **cpu,
            "devices_cpu_s": self.sim.cpu_seconds,
        }
        return Sample(rate(n, t_end - t0), {k: round(v, 3) for k, v in detail.items()})

    # -- profiling

    def profile_round(self, directory: Path) -> dict[str, Any]:
        """One more project round under cProfile, with SQL statements counted."""
        directory.mkdir(parents=True, exist_ok=True)
        counter = StatementCounter()
        event.listen(self.engine, "before_cursor_execute", counter)
        # CPU time of the profiled thread, not wall time: under GIL contention a
        # wall clock charges the waits to whatever function was running.
        main_profiler = cProfile.Profile(time.thread_time)
        self.router.profiler = cProfile.Profile(time.thread_time)
        original = self.publisher.devices_changed

        def profiled(ids: Any) -> None:
            main_profiler.enable()
            try:
                original(ids)
            finally:
                main_profiler.disable()

        self.publisher.devices_changed = profiled  # type: ignore[method-assign]
        try:
            sample = self.project_round()
        finally:
            self.publisher.devices_changed = original  # type: ignore[method-assign]
            event.remove(self.engine, "before_cursor_execute", counter)
            dispatcher_profiler, self.router.profiler = self.router.profiler, None
        n = self.config.devices
        for label, profiler in (
            ("issue_publish", main_profiler),
            ("ack_dispatch", dispatcher_profiler),
        ):
            assert profiler is not None
            profiler.dump_stats(directory / f"{NAME}_{label}.pstats")
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(40)
            (directory / f"{NAME}_{label}.txt").write_text(text.getvalue())
        statements = {
            "issue_thread_per_device": counter.by_thread.get(_WORKER, 0) / n,
            "dispatcher_per_device": counter.by_thread.get("hub-dispatch", 0) / n,
            "by_thread": dict(counter.by_thread),
        }
        return {"profiled_rate": sample.value, "phases": dict(sample.detail), "sql": statements}


_WORKER = "bench-fanout-publish"


def _bounded(work: Callable[[], object], seconds: float, what: str) -> float:
    """Run ``work`` on a daemon thread; raise if it has not finished in ``seconds``.

    Returns:
        The CPU seconds the thread used.
    """
    errors: list[BaseException] = []
    cpu: list[float] = []

    def target() -> None:
        started = time.thread_time()
        try:
            work()
        except BaseException as exc:
            errors.append(exc)
        finally:
            cpu.append(time.thread_time() - started)

    thread = threading.Thread(target=target, name=_WORKER, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise RuntimeError(f"{what}: not finished after {seconds:.0f}s")
    if errors:
        raise errors[0]
    return cpu[0] if cpu else 0.0


def _thread_cpu_seconds(name: str) -> float:
    """CPU seconds (user + system) of this process's live thread called ``name``."""
    for thread in threading.enumerate():
        if thread.name == name and thread.native_id is not None:
            try:
                stat = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
            except OSError:
                return 0.0
            fields = stat.rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


class BarePublisher:
    """The baseline's publisher: bare paho, QoS 1, the hub's in-flight window."""

    def __init__(self, port: int, password: str) -> None:
        self._window = threading.BoundedSemaphore(INFLIGHT_WINDOW)
        self._lock = threading.Lock()
        self._outstanding = 0
        self._all_acked = threading.Event()
        self._all_acked_at = 0.0
        self._connected = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"bare-{secrets.token_hex(4)}",
            protocol=mqtt.MQTTv311,
            clean_session=False,
        )
        self._client.username_pw_set(HUB_USER, password)
        self._client.max_inflight_messages_set(PAHO_INFLIGHT_LIMIT)
        self._client.on_connect = lambda *_a: self._connected.set()
        self._client.on_publish = self._on_publish
        self._client.connect(HOST, port, keepalive=30)
        self._client.loop_start()
        if not self._connected.wait(15):
            raise RuntimeError("bare publisher could not connect")

    def publish_all(
        self, topic_list: Sequence[str], payloads: Sequence[bytes], timeout: float
    ) -> float:
        """Publish everything; return ``time.monotonic()`` when the last PUBACK came in."""
        with self._lock:
            self._outstanding = len(payloads)
            self._all_acked.clear()
        for topic, payload in zip(topic_list, payloads, strict=True):
            self._window.acquire()
            info = self._client.publish(topic, payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise RuntimeError(f"bare publish failed: {mqtt.error_string(info.rc)}")
        if not self._all_acked.wait(timeout):
            raise RuntimeError("bare publisher: PUBACKs missing")
        return self._all_acked_at

    def _on_publish(self, *_args: Any) -> None:
        self._window.release()
        with self._lock:
            self._outstanding -= 1
            if self._outstanding == 0:
                self._all_acked_at = time.monotonic()
                self._all_acked.set()

    def stop(self) -> None:
        """Disconnect."""
        self._client.disconnect()
        self._client.loop_stop()


# ------------------------------------------------------------------ entry point


def _cpu_notes(project: list[Sample], baseline: list[Sample], n: int) -> list[str]:
    """What the rounds' CPU seconds say about the best ratio this machine allows."""

    def med(runs: list[Sample], key: str) -> float:
        return median([float(r.detail.get(key, 0.0)) for r in runs])

    hub, devices, broker = (med(project, k) for k in _CPU_KEYS)
    total = hub + devices + broker
    base_hub, base_devices, base_broker = (med(baseline, k) for k in _CPU_KEYS)
    base_total = base_hub + base_devices + base_broker
    floor, base_floor = max(hub, total / 2), max(base_hub, base_total / 2)
    best = rate(n, floor) / median([r.value for r in baseline]) if floor > 0 else 0.0
    threads = ", ".join(
        f"{label} {med(project, key):.2f}"
        for label, key in (
            ("issuing/publishing thread", "hub_issue_thread_cpu_s"),
            ("paho network thread", "hub_network_thread_cpu_s"),
            ("dispatcher", "hub_dispatch_thread_cpu_s"),
        )
    )
    return [
        f"CPU seconds per project round (medians): hub process {hub:.2f} ({threads}), "
        f"simulated devices {devices:.2f}, Mosquitto {broker:.2f}; {total:.2f} in all, "
        f"{total / n * 1e6:,.0f} µs per device. A baseline round uses {base_total:.2f} "
        f"(bare publisher's process {base_hub:.2f}).",
        f"On 2 cores a project round cannot take less than max(hub process, all CPU / 2) = "
        f"{floor:.2f} s (the hub's threads share one GIL): at most {rate(n, floor):,.0f} "
        f"devices/s, {best:.2f} of this run's baseline median, even if nothing ever waited. "
        f"The same bound for the baseline is {base_floor:.2f} s, so with both sides at their "
        f"CPU bounds the ratio would be {base_floor / floor if floor else 0.0:.2f}. Other work "
        "on the machine slows the GIL-bound hub most (1-minute load average per run in "
        "results.json).",
    ]


_CPU_KEYS = ("hub_cpu_s", "devices_cpu_s", "broker_cpu_s")


def run(
    *, quick: bool, repeats: int, profile_dir: Path | None, say: Callable[[str], None] = print
) -> BenchResult:
    """Run the manifest fan-out benchmark and its baseline; return the medians."""
    config = FanoutConfig(
        devices=QUICK_DEVICES if quick else FULL_DEVICES,
        repeats=repeats,
        profile_dir=profile_dir,
        timeout=120.0 if quick else 400.0,
    )
    logging.getLogger("hub").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmp:
        bench = FanoutBench(config, Path(tmp), say)
        try:
            bench.start()
            warm = bench.project_round()  # creates every device's manifest row; untimed
            say(f"  warm-up (first issue, inserts manifest rows): {warm.value:,.1f} {UNIT}")
            bench.baseline_round()
            project_runs, baseline_runs = interleave(
                bench.project_round, bench.baseline_round, config.repeats, log=say
            )
            detail: dict[str, Any] = {
                "devices": config.devices,
                "simulator_processes": config.sim_processes,
                "simulator_connections": config.sim_processes * config.sim_clients,
                "inflight_window": INFLIGHT_WINDOW,
                "warmup_rate": round(warm.value, 2),
            }
            if profile_dir is not None:
                say("  profiling one more project round (cProfile, SQL statement counts)")
                detail["profile"] = bench.profile_round(profile_dir)
        finally:
            bench.stop()
    n = config.devices
    return BenchResult(
        name=NAME,
        unit=UNIT,
        target_ratio=TARGET_RATIO,
        project_runs=project_runs,
        baseline_runs=baseline_runs,
        description=(
            f"Product change affecting {n:,} devices on Mosquitto: update_feature, "
            "ManifestPublisher.devices_changed (chunks of 900 devices, each issued in one "
            "transaction: effective features, Ed25519 signing, bulk UPDATE, commit, then "
            "HubMqttClient.publish at QoS 1 through the 1,000 in-flight window), device-side "
            "verification (device_agent.trust.accept_manifest) and a "
            "ManifestAck per device, received by the hub's InboundRouter; the clock stops when "
            "the N-th ack has committed (delivery_state = acknowledged, checked for all N). "
            "Baseline: bare paho QoS 1 loop of the same N payload sizes to the same topics, "
            "same window, same broker, counted by the same subscriber connections."
        ),
        notes=[
            *_cpu_notes(project_runs, baseline_runs, n),
            f"simulated devices: {config.sim_processes} processes with {config.sim_clients} "
            "MQTT connections each (bench/_fanout_devices.py), each connection subscribed to "
            f"{n // (config.sim_processes * config.sim_clients):,} explicit "
            "d/{id}/down/manifest topics",
            "runs interleaved baseline/project after one untimed warm-up round of each",
            "per run in results.json: phases (product_change_s, issue_first_chunk_s, "
            "issue_and_publish_s with sign_s inside it, acks_after_publish_s, total_s), CPU "
            "seconds per process and hub thread, ack batches, and the machine's 1-minute load",
        ],
        detail=detail,
    )
