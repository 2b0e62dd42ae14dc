"""A fake hub and a device around FirmwareComponent, for unit tests (no broker).

The fake hub follows the wire contract: it answers ``fw_query`` with the
device's pending offer, ``fw_chunk_req`` with the chunks, ``fw_report`` with
``fw_report_ack``; a ``job`` is pending until the device reported a final
step for it. Faults are injected with ``tamper`` (applied to every message on
its way down) and ``drop_requests``.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from device_agent.firmware.component import FirmwareComponent, HealthCheck, provision
from device_agent.firmware.settings import FirmwareSettings
from device_agent.firmware.slots import CrashHook, FirmwareDir
from device_agent.outgoing import Outgoing
from protocols import cose, suit, topics
from protocols.errors import ProtocolError
from protocols.firmware_messages import (
    FirmwareChunk,
    FirmwareChunkRequest,
    FirmwareOffer,
    FirmwareQuery,
    FirmwareReport,
    FirmwareReportAck,
)
from protocols.messages import Message, decode_message, encode_message

DEV = "dev-00000000000000000042"
VENDOR = "fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe"
CLASS = "1492af14-2569-5e48-bf42-9b2d51f2ab45"
OTHER = "5b7c1a58-0b6c-4d8e-9a59-7f2b1e9e4d11"
CHUNK = 1024
FACTORY = b"factory image v1 " * 100  # 1700 bytes
NEW = random.Random(2).randbytes(6656) + b"new firmware v2"  # 6671 bytes: 7 chunks, last short
KID = b"fw-test"
SIGNING_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
FINAL = {"confirmed", "failed", "reverted"}


def job_id(n: int) -> str:
    return f"job-{n:024x}"


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def public_key(key: Ed25519PrivateKey = SIGNING_KEY, kid: bytes = KID) -> cose.CoseKey:
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return cose.CoseKey.ed25519(kid, raw)


def envelope(
    image: bytes,
    sequence: int,
    *,
    vendor: str = VENDOR,
    klass: str = CLASS,
    chunk_size: int = CHUNK,
    key: Ed25519PrivateKey = SIGNING_KEY,
    kid: bytes = KID,
) -> bytes:
    return suit.build_envelope(
        sequence=sequence,
        vendor_id=vendor,
        class_id=klass,
        image=image,
        uri=f"mqtt://firmware/{sequence}",
        chunk_size=chunk_size,
        kid=kid,
        sign=key.sign,
    )


def settings(**overrides: object) -> FirmwareSettings:
    values: dict[str, object] = {"vendor_id": VENDOR, "class_id": CLASS}
    values.update(overrides)
    return FirmwareSettings(**values)  # type: ignore[arg-type]


@dataclass
class Job:
    job_id: str
    image: bytes
    envelope: bytes
    chunk_size: int = CHUNK
    http_path: str | None = None

    def offer(self) -> FirmwareOffer:
        return FirmwareOffer(
            job_id=self.job_id,
            envelope=self.envelope,
            chunk_size=self.chunk_size,
            http_path=self.http_path,
        )

    def chunk(self, index: int) -> bytes:
        return self.image[index * self.chunk_size : (index + 1) * self.chunk_size]


def make_job(n: int, image: bytes = NEW, sequence: int = 2, **kwargs: object) -> Job:
    chunk_size = int(kwargs.pop("chunk_size", CHUNK))  # type: ignore[call-overload]
    http_path = kwargs.pop("http_path", None)
    env = envelope(image, sequence, chunk_size=chunk_size, **kwargs)  # type: ignore[arg-type]
    return Job(job_id(n), image, env, chunk_size, http_path)  # type: ignore[arg-type]


Tamper = Callable[[Message], list[Message]]


@dataclass
class FakeHub:
    """The hub's side of the contract, in memory."""

    jobs: list[Job] = field(default_factory=list)
    tamper: Tamper | None = None
    drop_requests: bool = False
    ack_reports: bool = True
    reports: list[FirmwareReport] = field(default_factory=list)
    requests: list[FirmwareChunkRequest] = field(default_factory=list)
    queries: list[FirmwareQuery] = field(default_factory=list)
    chunks_sent: int = 0

    def job(self, job: str) -> Job | None:
        return next((j for j in self.jobs if j.job_id == job), None)

    def finished(self, job: str) -> bool:
        return any(r.job_id == job and r.step in FINAL for r in self.reports)

    def pending(self) -> Job | None:
        return next((j for j in self.jobs if not self.finished(j.job_id)), None)

    def steps(self, job: str) -> list[str]:
        """Distinct reports of ``job`` in key order (asserts one key, one report)."""
        by_key: dict[str, FirmwareReport] = {}
        for report in self.reports:
            assert by_key.setdefault(report.key, report) == report, "one key, two reports"
        ordered = sorted(by_key.values(), key=lambda r: int(r.key.rsplit("/", 1)[1]))
        return [r.step for r in ordered if r.job_id == job]

    def reply(self, message: Message) -> list[Message]:
        out: list[Message] = []
        if isinstance(message, FirmwareQuery):
            self.queries.append(message)
            pending = self.pending()
            if pending is not None:
                out.append(pending.offer())
        elif isinstance(message, FirmwareChunkRequest):
            self.requests.append(message)
            job = self.job(message.job_id)
            if job is not None and not self.drop_requests:
                count = -(-len(job.image) // job.chunk_size)
                for index in range(message.index, min(message.index + message.count, count)):
                    self.chunks_sent += 1
                    out.append(FirmwareChunk(job.job_id, index, job.chunk(index)))
        elif isinstance(message, FirmwareReport):
            self.reports.append(message)
            if self.ack_reports:
                out.append(FirmwareReportAck(keys=(message.key,)))
        if self.tamper is None:
            return out
        return [changed for item in out for changed in self.tamper(item)]


@dataclass
class Device:
    """A device: its firmware directory and a component that is rebuilt at each power-on."""

    root: Path
    hub: FakeHub
    settings: FirmwareSettings = field(default_factory=settings)
    keys: list[cose.CoseKey] = field(default_factory=lambda: [public_key()])
    health: HealthCheck | None = None
    crash: CrashHook | None = None
    factory: bytes = FACTORY
    factory_sequence: int = 1
    now: int = 1_700_000_000
    component: FirmwareComponent | None = None
    published: list[Message] = field(default_factory=list)
    undecodable: int = 0

    def provision(self) -> None:
        provision(self.root, self.factory, sequence=self.factory_sequence)

    def power_on(self) -> FirmwareComponent:
        self.component = None
        self.component = FirmwareComponent(
            device_id=DEV,
            root=self.root,
            settings=self.settings,
            keys=lambda: self.keys,
            health=self.health,
            crash=self.crash,
            now=self.now,
        )
        return self.component

    @property
    def fw(self) -> FirmwareDir:
        return FirmwareDir(self.root)

    def slot_digest(self, slot: str) -> bytes:
        path = self.fw.slot_path(slot)  # type: ignore[arg-type]
        return sha(path.read_bytes()) if path.exists() else sha(b"")

    def decode(self, outgoing: list[Outgoing]) -> list[Message]:
        messages = []
        for item in outgoing:
            assert item.topic == topics.device_up(DEV, topics.UpKind.FIRMWARE)
            assert item.qos == 1
            message = decode_message(item.payload)  # what the hub would decode
            self.published.append(message)
            messages.append(message)
        return messages

    def exchange(self, outgoing: list[Outgoing], max_rounds: int = 10_000) -> None:
        """Deliver ``outgoing`` to the hub and its answers back, until quiet."""
        assert self.component is not None
        queue = [reply for m in self.decode(outgoing) for reply in self.hub.reply(m)]
        rounds = 0
        while queue:
            rounds += 1
            assert rounds < max_rounds, "the exchange does not settle"
            message = queue.pop(0)
            try:
                wire = decode_message(encode_message(message))  # through the codec
            except ProtocolError:
                self.undecodable += 1  # the session logs and drops these
                continue
            answer = self.component.on_message(wire, now=self.now)
            assert answer is not None, f"{message.TYPE} not taken by the component"
            queue.extend(reply for m in self.decode(answer) for reply in self.hub.reply(m))

    def connect(self) -> None:
        assert self.component is not None
        self.exchange(self.component.on_connected(now=self.now))

    def tick(self, seconds: int = 1) -> None:
        assert self.component is not None
        self.now += seconds
        self.exchange(self.component.tick(now=self.now))

    def offer(self, job: Job) -> None:
        assert self.component is not None
        answer = self.component.on_message(job.offer(), now=self.now)
        assert answer is not None
        self.exchange(answer)
