"""A simulated device around the installer: images, a hub, crash injection."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from device_agent.firmware.install import Slot, Target
from device_agent.firmware.report import StepReport
from device_agent.firmware.slots import FirmwareDir, Hooks, Installer

DEV = "dev-fw-0001"
CHUNK = 64
OLD = b"old firmware v1 " * 24  # 384 bytes
NEW = bytes(range(256)) * 2 + b"new firmware v2"  # 527 bytes: last chunk is short
OLD_DIGEST = hashlib.sha256(OLD).digest()
NEW_DIGEST = hashlib.sha256(NEW).digest()


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def target(job: str = "job-1", seq: int = 2, image: bytes = NEW) -> Target:
    return Target(job_id=job, sequence=seq, digest=sha(image), size=len(image))


class Crash(Exception):
    """Injected power loss."""


class CrashAt:
    """Counts persistence points across restarts; raises at the chosen ones."""

    def __init__(self, at: set[int] | None = None) -> None:
        self.at = at or set()
        self.points: list[str] = []

    def __call__(self, point: str) -> None:
        index = len(self.points)
        self.points.append(point)
        if index in self.at:
            raise Crash(f"crash #{index} at {point}")


@dataclass
class Hub:
    """Collects reports; ``online=False`` refuses them."""

    online: bool = True
    received: list[StepReport] = field(default_factory=list)

    def send(self, report: StepReport) -> bool:
        if self.online:
            self.received.append(report)
        return self.online

    def deduplicated(self) -> list[StepReport]:
        by_key: dict[str, StepReport] = {}
        for report in self.received:
            assert by_key.setdefault(report.key, report) == report, "one key, two reports"
        return sorted(by_key.values(), key=lambda r: int(r.key.rsplit("/", 1)[1]))

    def steps(self, job: str = "job-1") -> list[str]:
        return [r.step.value for r in self.deduplicated() if r.job_id == job]


@dataclass
class Sim:
    """The device: the payload it downloads and how images fare at boot.

    ``verdicts`` maps an image digest to its health check verdict; asking for
    an image not in it (a partial or unverified image booted) is recorded.
    """

    root: Path
    payload: bytes = NEW
    verdicts: dict[bytes, bool | None] = field(default_factory=dict)
    hub: Hub = field(default_factory=Hub)
    crash: CrashAt = field(default_factory=CrashAt)
    max_boot_attempts: int = 3
    interrupt_after: int | None = None
    fetch_offsets: list[int] = field(default_factory=list)
    health_calls: list[bytes] = field(default_factory=list)
    bad_boots: list[bytes] = field(default_factory=list)
    clock_now: int = 1_700_000_000

    def __post_init__(self) -> None:
        self.verdicts = {OLD_DIGEST: True, NEW_DIGEST: True, **self.verdicts}

    def provision(self) -> None:
        FirmwareDir(self.root).provision(OLD, "a")

    def fetch(self, tgt: Target, offset: int) -> Iterator[bytes]:
        self.fetch_offsets.append(offset)
        for sent, start in enumerate(range(offset, len(self.payload), CHUNK)):
            if self.interrupt_after is not None and sent >= self.interrupt_after:
                self.interrupt_after = None
                raise ConnectionError("link dropped")
            yield self.payload[start : start + CHUNK]

    def health(self, slot: Slot) -> bool | None:
        digest = sha(FirmwareDir(self.root).slot_path(slot).read_bytes())
        self.health_calls.append(digest)
        if digest not in self.verdicts:
            self.bad_boots.append(digest)
            return False
        return self.verdicts[digest]

    def clock(self) -> int:
        self.clock_now += 1
        return self.clock_now

    def hooks(self) -> Hooks:
        return Hooks(
            fetch=self.fetch,
            health=self.health,
            send=self.hub.send,
            clock=self.clock,
            crash=self.crash,
        )

    def power_on(self) -> Installer:
        return Installer(self.root, DEV, self.hooks(), max_boot_attempts=self.max_boot_attempts)

    def slot_digest(self, slot: Slot) -> bytes:
        path = FirmwareDir(self.root).slot_path(slot)
        return sha(path.read_bytes()) if path.exists() else sha(b"")
