"""Fakes for the metering tests: entitlements, a hub that stores each key once, time."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from device_agent.metering.buffer import BUFFER_FILE, UsageBuffer, _insert
from device_agent.metering.component import MeteringComponent
from device_agent.metering.config import MeteringSettings
from device_agent.metering.meter import Meter
from device_agent.outgoing import Outgoing
from protocols.errors import MessageError
from protocols.manifest import FeatureEntry
from protocols.messages import decode_as
from protocols.usage_messages import AckResult, UsageAck, UsageBatch, UsageRecord, parse_record

DEV = "dev-00000000000000000001"
T0 = 1_800_000_000  # 2027-01-15T08:00:00Z
DAY = 86_400
USAGE_TOPIC = f"d/{DEV}/up/usage"


@dataclass
class FakeEntitlements:
    """A manifest held in memory: the features and the signed time anchor."""

    features: dict[str, FeatureEntry] = field(default_factory=dict)
    anchor: int = 0

    def entry(self, key: str, *, now: int) -> FeatureEntry | None:
        entry = self.features.get(key)
        return entry if entry is not None and entry.enabled else None

    def effective_now(self, now: int) -> int:
        return max(now, self.anchor)


def open_buffer(state_dir: Path, **kwargs: int) -> UsageBuffer:
    return UsageBuffer.open(state_dir / BUFFER_FILE, **kwargs)


def bulk_append(
    buffer: UsageBuffer, count: int, meter: str = "m", dim: str | None = None
) -> list[tuple[int, int]]:
    """Append ``count`` records in one transaction (one fsync instead of ``count``)."""
    with buffer._write() as db:
        return [_insert(db, meter, 1, T0, dim).key for _ in range(count)]


def meter_for(
    buffer: UsageBuffer, clock_value: list[int] | None = None, **features: FeatureEntry
) -> Meter:
    """A meter over ``buffer`` entitled to ``features`` (default: ``api_calls`` uncapped)."""
    held = features or {"api_calls": FeatureEntry(enabled=True)}
    clock = clock_value if clock_value is not None else [T0]
    return Meter(buffer, FakeEntitlements(dict(held)), clock=lambda: clock[0])


def component(buffer: UsageBuffer, **settings: float) -> MeteringComponent:
    return MeteringComponent(buffer, device_id=DEV, settings=MeteringSettings(**settings))  # type: ignore[arg-type]


def batch_of(out: Outgoing) -> UsageBatch:
    assert out.topic == USAGE_TOPIC and out.qos == 1
    return decode_as(UsageBatch, out.payload)


def keys_of(outs: list[Outgoing]) -> list[tuple[int, int]]:
    return [raw.key for out in outs for raw in batch_of(out).records]


@dataclass
class FakeHub:
    """Stores each (boot_epoch, seq) once and answers like the hub contract says."""

    stored: dict[tuple[int, int], UsageRecord] = field(default_factory=dict)
    codes: list[str] = field(default_factory=list)

    def receive(self, out: Outgoing) -> UsageAck:
        batch = batch_of(out)
        results = []
        for raw in batch.records:
            try:
                record = parse_record(raw)
            except MessageError:
                code = "rejected"
            else:
                held = self.stored.get(record.key)
                if held is None:
                    self.stored[record.key] = record
                    code = "stored"
                else:
                    code = "duplicate" if held == record else "conflict"
            results.append(AckResult(raw.boot_epoch, raw.seq, code))
            self.codes.append(code)
        return UsageAck(results=tuple(results))


def ack(*keys: tuple[int, int], code: str = "stored") -> UsageAck:
    return UsageAck(results=tuple(AckResult(e, s, code) for e, s in keys))
