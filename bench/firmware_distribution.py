"""Firmware distribution over MQTT (issue 4, "Benchmark").

A 1 MiB image goes to N = 200 devices (50 with ``--quick``) over Mosquitto
through the hub's real path, in **payload MiB per second, aggregated over all
devices** (N x 1 MiB divided by the time until the last device holds its last
verified chunk):

1. every device publishes a real ``fw_query`` on ``d/{id}/up/firmware``;
2. the hub's own MQTT client (:class:`hub.mqtt.adapter.HubMqttClient`) hands
   each batch to its :class:`hub.inbound.InboundRouter` with the firmware
   plugin's :class:`hub.firmware.delivery.FirmwareHandler`: the query is
   recorded and answered with the offer of the device's active job (a real
   rollout, started and offered through ``hub.rollouts``), one transaction per
   batch, published after the commit;
3. each device verifies the envelope with the agent's SUIT processor
   (:func:`device_agent.firmware.processor.verify_offer`: COSE_Sign1 under the
   firmware key, vendor, class, anti-rollback, chunk digests) and pulls the
   payload with the agent's pull window
   (:class:`device_agent.firmware.download.ChunkWindow`: ``fw_chunk_req`` of
   16 chunks, 32 in flight, skipped requests asked again, a 0.5 s timeout
   that measured round trips stretch up to 2 s, a stall asking again for the
   oldest request);
4. the handler checks job, entitlement gate (a pass trusted for its 1 s TTL)
   and index for every request and answers ``fw_chunk`` messages assembled from
   the package's cached chunk tails; requests over its per-call byte budget
   are held over and served by the next call, which the adapter runs as soon
   as the previous chunks are published; every chunk is checked on arrival
   against its signed digest (:func:`device_agent.firmware.processor.check_chunk`).

The devices do not write slots or persist install state: the benchmark
measures distribution, not the simulated flash (the A/B install and its fsyncs
are the crash tests' subject). After every run each device must have verified
every chunk exactly once into its image, with no refused chunk, or the run fails.

Baseline, same broker, same run: a bare paho client publishes the same number
of messages of exactly the sizes of the hub's ``fw_chunk`` messages to the same
N ``d/{id}/down/firmware`` topics at QoS 1 with the hub's in-flight window
(1,000), chunk index by chunk index across the devices; the same simulator
connections only count them. The clock stops at the later of the last arrival
and the last PUBACK. Both figures count N x image bytes.

With ``--profile DIR`` one more project round runs with the dispatcher thread
(handler calls and publishing) under cProfile, counting that thread's CPU
time: ``DIR/firmware_distribution_dispatch.pstats`` and ``.txt``.

Simulated devices: one separate process with 4 paho connections, each
subscribed to its share of the explicit ``d/{id}/down/firmware`` and
``d/{id}/down/error`` topics, logged in as a bench user whose ACL reads
``d/+/down/#`` and writes ``d/+/up/#`` (as in ``manifest_fanout``).
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import logging
import multiprocessing
import os
import pstats
import secrets
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from bench.harness import BenchResult, Sample, interleave, rate
from bench.manifest_fanout import (
    HOST,
    HUB_USER,
    MAX_PAYLOAD,
    SIM_USER,
    SUBSCRIBE_CHUNK,
    BarePublisher,
    BenchBroker,
    mosquitto_binary,
    seed,
)
from hub.clock import utc_now
from hub.db.engine import make_engine, make_session_factory
from hub.db.migrate import upgrade
from hub.firmware.blobs import LocalBlobStore
from hub.firmware.catalogue import PackageInput, Uploader, create_package
from hub.firmware.delivery import FirmwareHandler
from hub.inbound import BatchResult, InboundRouter
from hub.manifests.service import ManifestPolicy
from hub.mqtt.adapter import INFLIGHT_WINDOW, PAHO_INFLIGHT_LIMIT, HubMqttClient
from hub.mqtt.outbound import Inbound, Outbound
from hub.registry.claims import ClaimPolicy
from hub.registry.models import DeviceClass
from hub.rollouts import engine, service
from hub.rollouts.models import FirmwareJob
from hub.rollouts.schemas import RolloutCreate
from protocols import topics
from protocols.firmware_messages import FirmwareChunk
from protocols.messages import encode_message
from provisioning.signer import Ed25519Signer

log = logging.getLogger(__name__)

NAME = "firmware_distribution"
UNIT = "MiB/s"
MIB = 1024 * 1024
TARGET_RATIO = 0.5
FULL_DEVICES = 200
QUICK_DEVICES = 50
IMAGE_BYTES = MIB
SIM_CLIENTS = 4
IN_FLIGHT = 32
REQUEST_SIZE = 16
CHUNK_TIMEOUT = 0.5
DRAIN_SECONDS = 0.5
BARE_MARK = b"BARE"
VENDOR = "fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe"  # as seeded by manifest_fanout.seed
CLASS = "1492af14-2569-5e48-bf42-9b2d51f2ab45"


# ------------------------------------------------------------------ simulated devices


def _sim_main(
    conn: Connection,
    port: int,
    password: str,
    device_ids: list[str],
    clients: int,
    key: tuple[bytes, bytes],
) -> None:
    """The simulated devices: ``clients`` paho connections in one process.

    Commands on ``conn``: ``("arm", mode, target)`` resets a round (``"count"``:
    count ``fw_chunk``-topic messages up to ``target``; ``"device"``: the agent's
    processor and pull window, ``target`` devices to complete) and answers
    ``("armed",)``; ``("go",)`` makes every device publish its ``fw_query`` (device
    mode); the process answers ``("done", t_last, stats, cpu)``. ``("stop",)`` ends it.
    """
    # Imported here: only this process plays the devices.
    from device_agent.firmware.download import ChunkWindow  # noqa: PLC0415
    from device_agent.firmware.errors import FirmwareError  # noqa: PLC0415
    from device_agent.firmware.processor import (  # noqa: PLC0415
        DeviceClass,
        VerifiedOffer,
        check_chunk,
        verify_offer,
    )
    from protocols import cose, suit  # noqa: PLC0415
    from protocols.firmware_messages import (  # noqa: PLC0415
        FirmwareChunkRequest,
        FirmwareOffer,
        FirmwareQuery,
    )
    from protocols.messages import decode_message  # noqa: PLC0415

    keys = [cose.CoseKey.ed25519(key[0], key[1])]
    device_class = DeviceClass(VENDOR, CLASS)
    lock = threading.Lock()
    done = threading.Event()
    round_state: dict[str, Any] = {"mode": "count", "target": 0, "count": 0, "last": 0.0}
    stats: Counter[str] = Counter()
    offers: dict[str, VerifiedOffer] = {}
    windows: dict[str, ChunkWindow] = {}
    sizes: dict[str, int] = {}
    client_of: dict[str, mqtt.Client] = {}

    def finished_one() -> None:
        round_state["count"] += 1
        if round_state["count"] == round_state["target"]:
            round_state["last"] = time.monotonic()
            done.set()

    def request(device_id: str, now: float) -> None:
        window = windows[device_id]
        job = offers[device_id].job_id
        up = topics.device_up(device_id, topics.UpKind.FIRMWARE)
        for index, count in window.plan(now):
            message = FirmwareChunkRequest(job_id=job, index=index, count=count)
            client_of[device_id].publish(up, encode_message(message), qos=1)
            stats["requests"] += 1

    def on_offer(device_id: str, message: FirmwareOffer) -> None:
        if device_id in offers:
            stats["offer_again"] += 1
            return
        verified = verify_offer(message, keys, device=device_class, state=suit.SuitState())
        offers[device_id] = verified
        windows[device_id] = ChunkWindow(
            chunk_count=verified.chunk_count,
            in_flight=IN_FLIGHT,
            request_size=REQUEST_SIZE,
            timeout=CHUNK_TIMEOUT,
            max_stalls=1000,
        )
        sizes[device_id] = 0
        request(device_id, time.monotonic())

    def on_chunk(device_id: str, message: FirmwareChunk) -> None:
        offer, window = offers.get(device_id), windows.get(device_id)
        if offer is None or window is None:
            stats["stale_chunks"] += 1  # a late duplicate of the previous round
            return
        if window.complete:
            stats["late_duplicates"] += 1  # asked twice (a timeout): harmless
            return
        try:
            check_chunk(offer, message)
        except FirmwareError as exc:
            stats[exc.code] += 1
            window.refused(message.index)
        else:
            if not window.accept(message.index, message.data, time.monotonic()):
                stats["duplicates"] += 1
            for chunk in window.take():
                sizes[device_id] += len(chunk)
            if window.complete:
                if sizes[device_id] != IMAGE_BYTES:
                    stats["wrong_size"] += 1
                finished_one()
                return
        request(device_id, time.monotonic())

    def on_message(_client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with lock:
            round_state["heard"] = time.monotonic()
            if round_state["mode"] == "count":
                if not msg.payload.startswith(BARE_MARK):
                    stats["stale"] += 1  # a late duplicate of the project round
                    return
                stats["received"] += 1
                stats["bytes"] += len(msg.payload)
                finished_one()
                return
            device_id = msg.topic.split("/", 2)[1]
            message = decode_message(bytes(msg.payload))
            if isinstance(message, FirmwareOffer):
                on_offer(device_id, message)
            elif isinstance(message, FirmwareChunk):
                on_chunk(device_id, message)
            else:
                stats[f"other:{message.TYPE}"] += 1

    def ticker() -> None:
        while True:
            time.sleep(0.2)
            with lock:
                if round_state["mode"] != "device":
                    continue
                now = time.monotonic()
                for device_id, window in windows.items():
                    if not window.complete and window.expire(now):
                        stats["gave_up"] += 1
                    if not window.complete and window.outstanding == 0:
                        request(device_id, now)

    per_client = [device_ids[i::clients] for i in range(clients)]
    mqtt_clients: list[mqtt.Client] = []
    pending: set[tuple[int, int]] = set()
    subscribed = threading.Event()

    def on_subscribe(_c: Any, index: int, mid: int, _codes: Any, _p: Any) -> None:
        with lock:
            pending.discard((index, mid))
            if not pending:
                subscribed.set()

    for index, ids in enumerate(per_client):
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"fwsim-{index}-{secrets.token_hex(4)}",
            protocol=mqtt.MQTTv311,
            clean_session=True,
            userdata=index,
        )
        client.username_pw_set(SIM_USER, password)
        client.max_inflight_messages_set(PAHO_INFLIGHT_LIMIT)
        client.on_message = on_message
        client.on_subscribe = on_subscribe
        client.connect(HOST, port, keepalive=60)
        client.loop_start()
        mqtt_clients.append(client)
        for device_id in ids:
            client_of[device_id] = client
        wanted = [
            (topics.device_down(d, kind), 1)
            for d in ids
            for kind in (topics.DownKind.FIRMWARE, topics.DownKind.ERROR)
        ]
        for start in range(0, len(wanted), SUBSCRIBE_CHUNK):
            with lock:
                result, mid = client.subscribe(wanted[start : start + SUBSCRIBE_CHUNK])
                if result != mqtt.MQTT_ERR_SUCCESS:
                    raise RuntimeError(f"subscribe failed: {mqtt.error_string(result)}")
                pending.add((index, mid))
    if not subscribed.wait(60):
        raise RuntimeError("the simulated devices' subscriptions were not acknowledged")
    threading.Thread(target=ticker, daemon=True).start()
    conn.send(("ready",))
    cpu = 0.0
    try:
        while True:
            command = conn.recv()
            if command[0] == "stop":
                return
            if command[0] == "arm":
                _, mode, target = command
                with lock:
                    done.clear()
                    stats.clear()
                    offers.clear()
                    windows.clear()
                    sizes.clear()
                    round_state.update(mode=mode, target=target, count=0, last=0.0)
                cpu = time.process_time()
                conn.send(("armed",))
                continue
            # "go"
            if round_state["mode"] == "device":
                query = encode_message(FirmwareQuery(installed_seq=0))
                for device_id in device_ids:
                    up = topics.device_up(device_id, topics.UpKind.FIRMWARE)
                    client_of[device_id].publish(up, query, qos=1)
            if not done.wait(600):
                conn.send(("timeout", round_state["count"], dict(stats)))
                continue
            while time.monotonic() - round_state.get("heard", 0.0) < DRAIN_SECONDS:
                time.sleep(0.1)  # late duplicates must not leak into the next round
            with lock:
                if round_state["mode"] == "device":
                    stats["lost"] = sum(w.lost for w in windows.values())
                    stats["stalls"] = sum(w.stalls for w in windows.values())
                    stats["bad_chunks"] = sum(w.bad_chunks for w in windows.values())
                    stats["bytes"] = sum(sizes.values())
                report = dict(stats)
            conn.send(("done", round_state["last"], report, time.process_time() - cpu))
    finally:
        for client in mqtt_clients:
            client.disconnect()
            client.loop_stop()


class Simulator:
    """The simulated devices' process, driven over a pipe."""

    def __init__(
        self, port: int, password: str, device_ids: list[str], clients: int, signer: Ed25519Signer
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_sim_main,
            args=(
                child,
                port,
                password,
                device_ids,
                clients,
                (signer.kid, signer.public_key_bytes()),
            ),
            name="bench-fw-devices",
            daemon=True,
        )
        self._process.start()
        child.close()
        self.cpu_seconds = 0.0
        self._expect("ready", 120)

    def arm(self, mode: str, target: int) -> None:
        """Reset for a round of ``target`` completions in ``mode``."""
        self._conn.send(("arm", mode, target))
        self._expect("armed", 30)

    def go(self) -> None:
        """Start the round (device mode: every device sends its ``fw_query``)."""
        self._conn.send(("go",))

    def wait(self, timeout: float) -> tuple[float, dict[str, int]]:
        """The round's end: ``time.monotonic()`` of the last completion, and stats."""
        if not self._conn.poll(timeout):
            raise RuntimeError(f"simulated devices silent for {timeout:.0f}s")
        reply = self._conn.recv()
        if reply[0] != "done":
            raise RuntimeError(f"simulated devices: {reply!r}")
        self.cpu_seconds = float(reply[3])
        return float(reply[1]), dict(reply[2])

    def stop(self) -> None:
        """Stop the process (by its own handle); kill it if it does not stop."""
        with contextlib.suppress(OSError, BrokenPipeError):
            self._conn.send(("stop",))
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)

    def _expect(self, what: str, timeout: float) -> None:
        if not self._conn.poll(timeout):
            raise RuntimeError(f"simulated devices silent for {timeout:.0f}s")
        reply = self._conn.recv()
        if reply[0] != what:
            raise RuntimeError(f"simulated devices answered {reply!r}, expected {what!r}")


# ------------------------------------------------------------------ the hub's data


@dataclass(frozen=True, slots=True)
class Release:
    """The seeded package and its offered jobs."""

    device_ids: list[str]
    job_ids: dict[str, str]  # device id -> job id
    chunk_size: int
    chunk_count: int
    image: bytes


def release(
    factory: sessionmaker[Session], store: LocalBlobStore, signer: Ed25519Signer, n: int
) -> Release:
    """N claimed, entitled devices; a package requiring the product; a started rollout
    whose jobs are all offered (the devices never report, so they stay active)."""
    now = utc_now()
    seeded = seed(factory, n, now)
    image = os.urandom(IMAGE_BYTES)
    with factory() as s:
        class_id = s.scalar(select(DeviceClass.id).where(DeviceClass.tenant_id == seeded.tenant_id))
        assert class_id is not None
        package = create_package(
            s,
            tenant_id=seeded.tenant_id,
            actor="bench",
            now=now,
            data=PackageInput(
                device_class_id=class_id, version="2.0.0", required_product_id=seeded.product_id
            ),
            payload=io.BytesIO(image),
            uploader=Uploader(store=store, signer=signer),
        )
        s.flush()
        rollout = service.create_rollout(
            s,
            tenant_id=seeded.tenant_id,
            actor="bench",
            now=now,
            data=RolloutCreate(name="bench", package_id=package.id),
        )
        s.flush()
        service.start_rollout(
            s, tenant_id=seeded.tenant_id, actor="bench", now=now, rollout_id=rollout.id
        )
        s.commit()
        engine.step_rollout(s, rollout.id, now, offer_batch=n)  # offers nobody hears
        s.commit()
        jobs = dict(
            s.execute(
                select(FirmwareJob.device_id, FirmwareJob.job_id).where(
                    FirmwareJob.rollout_id == rollout.id, FirmwareJob.state == "offered"
                )
            ).all()
        )
        if len(jobs) != n:
            raise RuntimeError(f"{len(jobs)} of {n} jobs offered")
        return Release(seeded.device_ids, jobs, package.chunk_size, package.chunk_count, image)


# ------------------------------------------------------------------ the benchmark


class ProfiledRouter(InboundRouter):
    """The hub's router; while :attr:`profiler` is set, each call runs under it."""

    profiler: cProfile.Profile | None = None

    def handle_batch(self, batch: Sequence[Inbound]) -> BatchResult:
        """Handle and commit as the hub does (profiled when asked)."""
        profiler = self.profiler
        if profiler is None:
            return super().handle_batch(batch)
        profiler.enable()
        try:
            return super().handle_batch(batch)
        finally:
            profiler.disable()

    def serve_backlog(self) -> BatchResult:
        """Serve held-over work as the hub does (profiled when asked)."""
        profiler = self.profiler
        if profiler is None:
            return super().serve_backlog()
        profiler.enable()
        try:
            return super().serve_backlog()
        finally:
            profiler.disable()


@dataclass
class DistributionConfig:
    """Knobs of one distribution benchmark."""

    devices: int
    repeats: int
    sim_clients: int = SIM_CLIENTS
    timeout: float = 300.0


class DistributionBench:
    """Broker, database, hub client, bare client and simulated devices for one run."""

    def __init__(
        self, config: DistributionConfig, workdir: Path, say: Callable[[str], None]
    ) -> None:
        self.config = config
        self.workdir = workdir
        self.say = say
        self.broker = BenchBroker(workdir, mosquitto_binary())
        self.manifest_signer = Ed25519Signer.generate()
        self.firmware_signer = Ed25519Signer.generate()
        self._cleanup: list[Callable[[], None]] = []

    def start(self) -> None:
        """Start broker, seed the database and the release, connect hub and devices."""
        n = self.config.devices
        self.broker.start()
        self._cleanup.append(self.broker.stop)
        url = f"sqlite:///{self.workdir / 'hub.db'}"
        upgrade(url)
        self.engine = make_engine(url)
        self._cleanup.append(self.engine.dispose)
        self.factory = make_session_factory(self.engine)
        self.store = LocalBlobStore(self.workdir / "blobs")
        started = time.monotonic()
        self.release = release(self.factory, self.store, self.firmware_signer, n)
        self.say(
            f"  seeded {n:,} devices, a {IMAGE_BYTES:,}-byte package in "
            f"{self.release.chunk_count} chunks of {self.release.chunk_size:,} bytes and a "
            f"started rollout in {time.monotonic() - started:.1f}s"
        )
        self.handler = FirmwareHandler(store=self.store)
        self.router = router = ProfiledRouter(
            session_factory=self.factory,
            claim_policy=ClaimPolicy(
                anchors=(self.manifest_signer.anchor("manifest"),), skew_seconds=300
            ),
            manifest_policy=ManifestPolicy(
                kid=self.manifest_signer.kid, sign=self.manifest_signer.sign
            ),
            clock=utc_now,
            max_payload_bytes=MAX_PAYLOAD,
            handlers=(self.handler,),
        )
        self.hub = HubMqttClient(
            host=HOST,
            port=self.broker.port,
            client_id=f"{HUB_USER}-{secrets.token_hex(4)}",
            username=HUB_USER,
            password=self.broker.hub_password,
            router=router,
            filters=(topics.HUB_UP_FILTER,),
        )
        self.hub.start()
        self._cleanup.append(self.hub.stop)
        self.bare = BarePublisher(self.broker.port, self.broker.hub_password)
        self._cleanup.append(self.bare.stop)
        self.sim = Simulator(
            self.broker.port,
            self.broker.sim_password,
            self.release.device_ids,
            self.config.sim_clients,
            self.firmware_signer,
        )
        self._cleanup.append(self.sim.stop)
        self.sizes = self._chunk_message_sizes()

    def stop(self) -> None:
        """Tear everything down, newest first."""
        while self._cleanup:
            step = self._cleanup.pop()
            with contextlib.suppress(Exception):
                step()

    def _chunk_message_sizes(self) -> list[int]:
        """The size of every ``fw_chunk`` message the hub sends one device."""
        job = next(iter(self.release.job_ids.values()))
        size, image = self.release.chunk_size, self.release.image
        return [
            len(encode_message(FirmwareChunk(job, i, image[i * size : (i + 1) * size])))
            for i in range(self.release.chunk_count)
        ]

    def _cpu(self, since: dict[str, float] | None = None) -> dict[str, float]:
        now = {"hub_cpu_s": time.process_time(), "broker_cpu_s": self.broker.cpu_seconds()}
        if since is None:
            return now
        return {key: value - since[key] for key, value in now.items()}

    def project_round(self) -> Sample:
        """Every device queries, verifies its offer and pulls the whole image."""
        n = self.config.devices
        self.sim.arm("device", n)
        cpu0 = self._cpu()
        t0 = time.monotonic()
        self.sim.go()
        t_last, stats = self.sim.wait(self.config.timeout)
        cpu = self._cpu(cpu0)
        chunks = n * self.release.chunk_count
        problems = {
            k: v
            for k, v in stats.items()
            if k in ("wrong_size", "chunk_corrupt", "chunk_size", "gave_up")
            or k.startswith("other:")
        }
        if stats.get("bytes") != n * IMAGE_BYTES or problems:
            raise RuntimeError(f"devices did not verify every image exactly: {stats}")
        self._check_jobs_still_offered()
        detail = {
            "total_s": t_last - t0,
            "chunk_requests": stats.get("requests", 0),
            "chunks_asked_again_lost": stats.get("lost", 0),
            "stalls": stats.get("stalls", 0),
            "duplicates": stats.get("duplicates", 0) + stats.get("late_duplicates", 0),
            "chunks": chunks,
            **cpu,
            "devices_cpu_s": self.sim.cpu_seconds,
        }
        return Sample(rate(n * IMAGE_BYTES, t_last - t0) / MIB, _rounded(detail))

    def profile_round(self, directory: Path) -> dict[str, Any]:
        """One more project round with the dispatcher thread under cProfile (its CPU time)."""
        directory.mkdir(parents=True, exist_ok=True)
        profiler = cProfile.Profile(time.thread_time)
        publish = self.hub.publish

        def profiled_publish(messages: list[Outbound]) -> None:
            profiler.enable()
            try:
                publish(messages)
            finally:
                profiler.disable()

        self.router.profiler = profiler
        self.hub.publish = profiled_publish  # type: ignore[method-assign]
        try:
            sample = self.project_round()
        finally:
            self.router.profiler = None
            self.hub.publish = publish  # type: ignore[method-assign]
        profiler.dump_stats(directory / f"{NAME}_dispatch.pstats")
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(40)
        (directory / f"{NAME}_dispatch.txt").write_text(text.getvalue())
        return {"profiled_rate": round(sample.value, 2), "phases": dict(sample.detail)}

    def _check_jobs_still_offered(self) -> None:
        with self.factory() as s:
            offered = s.scalar(
                select(func.count()).select_from(FirmwareJob).where(FirmwareJob.state == "offered")
            )
        if offered != self.config.devices:
            raise RuntimeError(f"{offered} jobs still offered, expected {self.config.devices}")

    def baseline_round(self) -> Sample:
        """The same messages' sizes, bare paho QoS 1 to the same topics, counted."""
        n = self.config.devices
        device_topics = [
            topics.device_down(d, topics.DownKind.FIRMWARE) for d in self.release.device_ids
        ]
        by_size = {size: BARE_MARK + os.urandom(size - len(BARE_MARK)) for size in set(self.sizes)}
        topic_list: list[str] = []
        payloads: list[bytes] = []
        for size in self.sizes:  # chunk index by chunk index, across the devices
            for topic in device_topics:
                topic_list.append(topic)
                payloads.append(by_size[size])
        self.sim.arm("count", len(payloads))
        cpu0 = self._cpu()
        t0 = time.monotonic()
        self.sim.go()
        t_pubacks = self.bare.publish_all(topic_list, payloads, self.config.timeout)
        t_last, stats = self.sim.wait(self.config.timeout)
        cpu = self._cpu(cpu0)
        if stats.get("received") != len(payloads):
            raise RuntimeError(f"bare subscriber counted {stats}, expected {len(payloads)}")
        t_end = max(t_pubacks, t_last)
        detail = {
            "last_received_s": t_last - t0,
            "all_pubacks_s": t_pubacks - t0,
            "messages": len(payloads),
            "wire_bytes": stats.get("bytes", 0),
            **cpu,
            "devices_cpu_s": self.sim.cpu_seconds,
        }
        return Sample(rate(n * IMAGE_BYTES, t_end - t0) / MIB, _rounded(detail))


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {key: round(value, 3) for key, value in values.items()}


def run(
    *, quick: bool, repeats: int, profile_dir: Path | None, say: Callable[[str], None] = print
) -> BenchResult:
    """Run the distribution benchmark and its baseline; return the medians."""
    config = DistributionConfig(devices=QUICK_DEVICES if quick else FULL_DEVICES, repeats=repeats)
    logging.getLogger("hub").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-fw-") as tmp:
        bench = DistributionBench(config, Path(tmp), say)
        try:
            bench.start()
            warm = bench.project_round()
            say(f"  warm-up: {warm.value:,.1f} {UNIT}")
            bench.baseline_round()
            project_runs, baseline_runs = interleave(
                bench.project_round, bench.baseline_round, config.repeats, log=say
            )
            detail: dict[str, Any] = {
                "devices": config.devices,
                "image_bytes": IMAGE_BYTES,
                "chunk_size": bench.release.chunk_size,
                "chunks_per_device": bench.release.chunk_count,
                "simulator_connections": config.sim_clients,
                "inflight_window": INFLIGHT_WINDOW,
                "device_in_flight_chunks": IN_FLIGHT,
                "device_request_size": REQUEST_SIZE,
                "warmup_rate": round(warm.value, 2),
            }
            if profile_dir is not None:
                say("  profiling one more project round (cProfile, dispatcher thread)")
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
            f"A {IMAGE_BYTES // MIB} MiB image to {n:,} devices over Mosquitto, in payload MiB/s "
            "aggregated over all devices: fw_query, offer from the hub's FirmwareHandler "
            "(InboundRouter batches, one transaction each), envelope verified by the agent's "
            "SUIT processor, pull by the agent's ChunkWindow (fw_chunk_req of 16, 32 in flight), "
            "chunks from the handler's cached per-package tails after job, gate (pass trusted "
            "1 s) and index checks, requests over a call's 8 MiB budget held for the next call, "
            "verified on arrival against their signed digests. Baseline: bare paho QoS 1 "
            "publishes of the same fw_chunk message sizes to the same topics with the same 1,000 "
            "in-flight window, counted by the same subscriber connections."
        ),
        notes=[
            f"simulated devices: {config.sim_clients} paho connections in a separate process; "
            "they verify every chunk but write no slot (the A/B install is not timed)",
            "runs interleaved baseline/project after one untimed warm-up round of each",
            "project detail per run: chunk requests, chunks asked again after a skipped "
            "request, stalls, duplicates (chunks that arrived after the device had asked "
            "again on its timeout); see results.json",
        ],
        detail=detail,
    )


__all__: Sequence[str] = ["NAME", "run"]
