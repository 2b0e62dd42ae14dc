"""Usage ingestion: the batch handler of ``d/{id}/up/usage``.

One call of :meth:`UsageHandler.handle` takes every ``usage_batch`` message
of one MQTT batch (already decoded, senders checked to be claimed devices,
device ids from the topics) and, inside the batch's transaction:

1. checks every record without the database (:func:`~hub.telemetry.records.check_record`);
2. reads the devices' tenants, their high-water marks, the stored content of
   keys at or below a mark (the only keys that can already exist), and the
   tenants' metered feature keys: a few queries whatever the record count;
3. answers every record, in arrival order, with exactly one final code:
   ``duplicate`` (same key, same content already held), ``conflict`` (same
   key, different content: recorded, the first stays), ``rejected`` (invalid,
   or a meter no product of the tenant meters), ``quarantined`` (timestamp
   outside the policy's window: kept, never billed) or ``stored``;
4. resolves each stored record's entitlement and cap (:mod:`.coverage`,
   :mod:`.caps`), then writes each table with one ``executemany``
   (:mod:`.store`) and maintains the gaps (:mod:`.gaps`);
5. returns one ``usage_ack`` per device listing every record's code of all
   that device's messages in the call (split at ``MAX_RECORDS`` results);
   the adapter publishes them only after the commit.

Nothing here raises for bad input: a message of another type on the usage
topic gets an ``error`` reply, a bad record its ``rejected`` code. A
database failure raises, the whole MQTT batch rolls back and the adapter
retries it; the device then simply hears nothing and replays.
"""

from __future__ import annotations

import functools
import logging
import operator
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import bindparam, or_, select
from sqlalchemy.orm import Session

from hub.mqtt.outbound import Outbound
from hub.registry.models import Device
from hub.telemetry.acks import encode_ack
from hub.telemetry.caps import CapTracker, TotalKey, period_start
from hub.telemetry.coverage import Coverage, Coverages, metered_keys
from hub.telemetry.gaps import SequenceBook
from hub.telemetry.models import UsageConflict, UsageQuarantine, UsageRecord
from hub.telemetry.policy import DEFAULT_POLICY, UsagePolicy
from hub.telemetry.records import Content, Parsed, Refused, check_records, micro_of
from hub.telemetry.store import Writer, chunks
from protocols import topics
from protocols.messages import ErrorReply, Message, encode_message
from protocols.usage_messages import MAX_RECORDS, UsageBatch

log = logging.getLogger(__name__)

FullKey = tuple[str, int, int]
"""``(device_id, boot_epoch, seq)``: the permanent idempotency key."""

_RECORD_COLUMNS = (
    "tenant_id", "device_id", "boot_epoch", "seq", "meter", "quantity", "dimension",
    "recorded_at", "received_at", "account_id", "product_id", "entitlement_id", "over_cap",
)  # fmt: skip
_KEY = ("device_id", "boot_epoch", "seq")
RANGES_PER_QUERY = 100


@dataclass(slots=True)
class Entry:
    """One record of one message and the code it gets."""

    device_id: str
    tenant_id: str
    record: Parsed | Refused
    code: str = ""
    reason: str = ""
    fresh: bool = False  # first seen in this call: to be written
    coverage: Coverage | None = None
    over_cap: bool = False

    @property
    def key(self) -> FullKey:
        """The record's permanent key."""
        return (self.device_id, self.record.boot_epoch, self.record.seq)


@dataclass
class IngestResult:
    """What one call stored and answered (for logs, tests and the benchmark)."""

    codes: Counter[str] = field(default_factory=Counter)
    gaps_opened: int = 0
    messages: int = 0


class UsageHandler:
    """The :class:`~hub.plugins.BatchHandler` of the ``usage`` topic kind."""

    kind = topics.UpKind.USAGE.value

    def __init__(self, policy: UsagePolicy = DEFAULT_POLICY) -> None:
        self.policy = policy
        self.last = IngestResult()

    def handle(
        self, session: Session, items: Sequence[tuple[str, Message]], now: datetime
    ) -> list[Outbound]:
        """Ingest every usage batch of ``items``; returns the acks and error replies."""
        replies: list[Outbound] = []
        tenants = _tenants(session, {device_id for device_id, _ in items})
        messages: list[list[Entry]] = []
        for device_id, message in items:
            tenant_id = tenants.get(device_id)
            if tenant_id is None:
                continue  # deleted meanwhile: nobody to bill
            if not isinstance(message, UsageBatch):
                replies.append(_wrong_type(device_id, message))
                continue
            messages.append(
                [Entry(device_id, tenant_id, r) for r in check_records(message.records)]
            )
        entries = [entry for message_entries in messages for entry in message_entries]
        result = IngestResult(messages=len(messages))
        if entries:
            result.gaps_opened = _Ingest(session, now, self.policy).run(entries)
        for message_entries in messages:
            result.codes.update(entry.code for entry in message_entries)
        replies.extend(_acks(messages))
        self.last = result
        if messages:
            _log(result, entries)
        return replies


# Built once (run for every MQTT batch of usage; see coverage.py).
_TENANTS = select(Device.id, Device.tenant_id).where(
    Device.id.in_(bindparam("ids", expanding=True))
)


def _tenants(session: Session, device_ids: set[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for chunk in chunks(sorted(device_ids)):
        rows = session.execute(_TENANTS, {"ids": list(chunk)})
        found.update((device_id, tenant_id) for device_id, tenant_id in rows)
    return found


def _wrong_type(device_id: str, message: Message) -> Outbound:
    topic = topics.device_up(device_id, topics.UpKind.USAGE)
    log.warning("refused a %r message on %s", message.TYPE, topic)
    reply = ErrorReply(
        code="invalid_message",
        message=f"a {message.TYPE!r} message does not belong on 'usage'",
        ref=topic,
    )
    return Outbound(topics.device_down(device_id, topics.DownKind.ERROR), encode_message(reply))


@functools.lru_cache(maxsize=65_536)
def _ack_topic(device_id: str) -> str:
    return topics.device_down(device_id, topics.DownKind.USAGE_ACK)


def _acks(messages: list[list[Entry]]) -> list[Outbound]:
    """One ``usage_ack`` per device (in order of first message), split at MAX_RECORDS results.

    Coalesced rather than one per message: with small batches the hub's QoS 1
    publish, and its PUBACK, per message cost as much as storing the record.
    A device deletes each answered key on its own and completes every batch
    whose keys are all answered, so one ack serves all its batches.
    """
    results: dict[str, list[tuple[int, int, str]]] = {}
    for entries in messages:
        device_results = results.setdefault(entries[0].device_id, [])
        device_results.extend((e.record.boot_epoch, e.record.seq, e.code) for e in entries)
    return [
        Outbound(_ack_topic(device_id), encode_ack(part))
        for device_id, device_results in results.items()
        for part in chunks(device_results, MAX_RECORDS)
    ]


def _log(result: IngestResult, entries: list[Entry]) -> None:
    codes = ", ".join(f"{code} {count}" for code, count in sorted(result.codes.items()))
    log.info(
        "usage: %d message(s), %d record(s): %s; %d gap(s) opened",
        result.messages,
        len(entries),
        codes,
        result.gaps_opened,
    )
    if not (result.codes["conflict"] or result.codes["rejected"]):
        return  # the usual case: no need to walk every entry again
    odd = Counter(
        (e.device_id, e.code, e.reason) for e in entries if e.code in ("conflict", "rejected")
    )
    for (device_id, code, reason), count in sorted(odd.items())[:20]:
        log.warning(
            "usage from %s: %d record(s) %s%s",
            device_id,
            count,
            code,
            f" ({reason})" if reason else "",
        )


class _Ingest:
    """The classification and writes of one call (one transaction)."""

    def __init__(self, session: Session, now: datetime, policy: UsagePolicy) -> None:
        self.session = session
        self.now = now
        self.earliest, self.latest = policy.window(now)
        self.book = SequenceBook()

    def run(self, entries: list[Entry]) -> int:
        """Answer every entry, write everything; returns the gaps opened."""
        self.book.load(
            self.session, {(e.device_id, e.record.boot_epoch) for e in entries if _storable(e)}
        )
        held = _held(self.session, entries, self.book.high)
        meters = metered_keys(self.session, {e.tenant_id for e in entries})
        self.book.mark(self._classify(entries, held, meters))
        stored = [e for e in entries if e.code == "stored"]
        tracker = self._cover(stored)
        writer = Writer(self.session)
        if self._write_records(writer, stored):
            # Another worker stored some keys first: count only what we stored,
            # or its quantities would be in the period totals twice.
            tracker = self._cover([e for e in stored if e.code == "stored"])
        self._write_others(writer, entries)
        tracker.save(writer)
        return self.book.save(self.session, writer, self.now)

    def _classify(
        self,
        entries: list[Entry],
        held: dict[FullKey, tuple[str, Content]],
        meters: dict[str, frozenset[str]],
    ) -> list[tuple[str, str, int, int]]:
        """Give every entry its code, in order; returns the records seen for the first time."""
        earliest, latest = self.earliest, self.latest
        seen: list[tuple[str, str, int, int]] = []
        for entry in entries:
            record = entry.record
            if type(record) is Refused:
                entry.code, entry.reason = "rejected", record.reason
                if record.storable:
                    seen.append((entry.tenant_id, entry.device_id, record.boot_epoch, record.seq))
                continue
            assert isinstance(record, Parsed)
            key = (entry.device_id, record.boot_epoch, record.seq)
            prior = held.get(key)
            if prior is not None:
                code, content = prior
                if content == record.content:
                    entry.code = "duplicate" if code == "stored" else code
                else:
                    entry.code = "conflict"
                continue
            if record.meter not in meters[entry.tenant_id]:
                entry.code, entry.reason = "rejected", f"unknown meter {record.meter!r}"
            elif earliest <= record.ts <= latest:
                entry.code = "stored"
                held[key] = ("stored", record.content)
            else:
                entry.code = "quarantined"
                entry.reason = "future" if record.ts > latest else "too_old"
                held[key] = ("quarantined", record.content)
            entry.fresh = True
            seen.append((entry.tenant_id, entry.device_id, record.boot_epoch, record.seq))
        return seen

    def _cover(self, stored: list[Entry]) -> CapTracker:
        """Set each stored entry's coverage and over-cap mark."""
        coverages = Coverages.load(self.session, {e.device_id for e in stored})
        keys: dict[int, TotalKey] = {}
        for index, entry in enumerate(stored):
            record = entry.record
            assert isinstance(record, Parsed)
            entry.coverage = coverages.resolve(entry.device_id, record.meter, record.ts)
            if entry.coverage is not None and entry.coverage.period is not None:
                period = entry.coverage.period
                keys[index] = (
                    entry.device_id,
                    record.meter,
                    period,
                    period_start(period, record.ts),
                )
        tracker = CapTracker()
        if keys:
            tracker.load(self.session, set(keys.values()))
        for index, key in keys.items():
            entry = stored[index]
            assert entry.coverage is not None and isinstance(entry.record, Parsed)
            entry.over_cap = tracker.add(
                entry.tenant_id, key, entry.record.micro, entry.coverage.cap
            )
        return tracker

    def _write_records(self, writer: Writer, stored: list[Entry]) -> bool:
        """Insert the new records; returns whether another writer won some keys."""
        rows = _record_rows(writer, stored, writer.moment(self.now))
        inserted = writer.insert("usage_records", _RECORD_COLUMNS, rows, conflict=_KEY)
        if inserted == len(rows):
            return False
        self._lost_race(stored)
        return True

    def _lost_race(self, stored: list[Entry]) -> None:
        """Another writer stored some keys first: answer those as a replay would be."""
        self.session.expire_all()
        ours = {e.key: e for e in stored}
        theirs = _contents(self.session, UsageRecord, set(ours), received_not=self.now)
        for key, content in theirs:
            entry = ours[key]
            assert isinstance(entry.record, Parsed)
            entry.code = "duplicate" if content == entry.record.content else "conflict"
        log.warning("usage: %d record(s) were stored concurrently by another worker", len(theirs))

    def _write_others(self, writer: Writer, entries: list[Entry]) -> None:
        received = writer.moment(self.now)
        quarantined, rejected, conflicts = [], [], []
        for e in entries:
            record = e.record
            if e.code == "rejected" and isinstance(record, Refused | Parsed):
                if not isinstance(record, Refused) or record.storable:
                    rejected.append(
                        (
                            e.tenant_id,
                            e.device_id,
                            record.boot_epoch,
                            record.seq,
                            e.reason[:200],
                            received,
                        )
                    )
            elif isinstance(record, Parsed) and e.code == "quarantined" and e.fresh:
                quarantined.append((*_content_row(writer, e, record), e.reason))
            elif isinstance(record, Parsed) and e.code == "conflict":
                conflicts.append(e)
        writer.insert(
            "usage_quarantine",
            (*_CONTENT_COLUMNS, "reason"),
            [(*row[:-1], received, row[-1]) for row in quarantined],
            conflict=_KEY,
        )
        writer.insert(
            "usage_rejections",
            ("tenant_id", "device_id", "boot_epoch", "seq", "reason", "received_at"),
            rejected,
            conflict=_KEY,
        )
        self._write_conflicts(writer, conflicts, received)

    def _write_conflicts(self, writer: Writer, conflicts: list[Entry], received: Any) -> None:
        """Record each distinct conflicting content once, however often it is offered."""
        if not conflicts:
            return
        known = set(_contents(self.session, UsageConflict, {e.key for e in conflicts}))
        rows = []
        for e in conflicts:
            record = e.record
            assert isinstance(record, Parsed)
            if (e.key, record.content) in known:
                continue
            known.add((e.key, record.content))
            rows.append((*_content_row(writer, e, record), received))
        writer.insert("usage_conflicts", _CONTENT_COLUMNS, rows)


_CONTENT_COLUMNS = (
    "tenant_id", "device_id", "boot_epoch", "seq", "meter", "quantity", "dimension",
    "recorded_at", "received_at",
)  # fmt: skip


def _storable(entry: Entry) -> bool:
    return not isinstance(entry.record, Refused) or entry.record.storable


def _content_row(writer: Writer, e: Entry, record: Parsed) -> tuple[Any, ...]:
    """Everything of :data:`_CONTENT_COLUMNS` but ``received_at``."""
    return (
        e.tenant_id,
        e.device_id,
        record.boot_epoch,
        record.seq,
        record.meter,
        writer.quantity(record.micro),
        record.dimension,
        writer.stamp(record.ts),
    )


def _record_rows(writer: Writer, stored: list[Entry], received: Any) -> list[tuple[Any, ...]]:
    """The ``usage_records`` rows (:data:`_RECORD_COLUMNS`) of the stored entries.

    One loop with its lookups bound once: it runs for every record ingested.
    The rows come back in ``recorded_at`` order (stable: arrival order among
    equal times). The ``(tenant_id, account_id, meter, recorded_at)`` index
    is then filled in one sweep instead of at random points of the time axis
    (measured: a third of the insert cost when a batch's times are spread),
    and ids still rise with arrival among records of one instant, which is
    all the ``latest`` tie-break and the time-then-id listings rely on.
    """
    stamp, quantity, raw_micro = writer.stamp, writer.quantity, writer.sqlite
    rows: list[tuple[Any, ...]] = []
    append = rows.append
    for e in stored:
        record = cast(Parsed, e.record)  # only Parsed records are stored
        cov = e.coverage
        micro = record.micro
        append((
            e.tenant_id, e.device_id, record.boot_epoch, record.seq, record.meter,
            micro if raw_micro else quantity(micro), record.dimension, stamp(record.ts),
            received,
            *((cov.account_id, cov.product_id, cov.entitlement_id) if cov else _UNCOVERED),
            e.over_cap,
        ))  # fmt: skip
    rows.sort(key=_RECORDED_AT)
    return rows


_UNCOVERED = (None, None, None)
_RECORDED_AT = operator.itemgetter(_RECORD_COLUMNS.index("recorded_at"))


def _held(
    session: Session, entries: list[Entry], high: dict[tuple[str, int], int]
) -> dict[FullKey, tuple[str, Content]]:
    """What is already held under the keys of ``entries`` that may exist.

    Only a key at or below its device's high-water mark can exist: new traffic
    (above the mark) costs no lookup at all.
    """
    candidates: set[FullKey] = set()
    for e in entries:
        record = e.record
        if isinstance(record, Parsed) and record.seq <= high.get(
            (e.device_id, record.boot_epoch), 0
        ):
            candidates.add(e.key)
    held: dict[FullKey, tuple[str, Content]] = {}
    if candidates:
        for model, code in ((UsageQuarantine, "quarantined"), (UsageRecord, "stored")):
            for key, content in _contents(session, model, candidates):
                held[key] = (code, content)
    return held


def _contents(
    session: Session,
    model: type[UsageRecord] | type[UsageQuarantine] | type[UsageConflict],
    keys: set[FullKey],
    *,
    received_not: datetime | None = None,
) -> list[tuple[FullKey, Content]]:
    """The content stored in ``model`` under ``keys``.

    Keys are looked up per device and epoch as ranges of sequences (a replay
    is mostly contiguous), a few ranges per query. With ``received_not``, rows
    received at that instant (this call's own) are left out.
    """
    grouped: dict[tuple[str, int], set[int]] = defaultdict(set)
    for device_id, epoch, seq in keys:
        grouped[(device_id, epoch)].add(seq)
    found: list[tuple[FullKey, Content]] = []
    for (device_id, epoch), seqs in grouped.items():
        for ranges in chunks(seq_ranges(seqs), RANGES_PER_QUERY):
            query = select(
                model.seq, model.meter, model.quantity, model.dimension, model.recorded_at
            ).where(
                model.device_id == device_id,
                model.boot_epoch == epoch,
                or_(*(model.seq.between(first, last) for first, last in ranges)),
            )
            if received_not is not None:
                query = query.where(model.received_at != received_not)
            found.extend(
                (
                    (device_id, epoch, seq),
                    (meter, micro_of(quantity), dimension, int(at.timestamp())),
                )
                for seq, meter, quantity, dimension, at in session.execute(query)
                if seq in seqs
            )
    return found


def seq_ranges(seqs: set[int], slack: int = 16) -> list[tuple[int, int]]:
    """Sorted ``seqs`` as inclusive ranges, merging holes of up to ``slack`` numbers."""
    ranges: list[tuple[int, int]] = []
    for seq in sorted(seqs):
        if ranges and seq - ranges[-1][1] <= slack + 1:
            ranges[-1] = (ranges[-1][0], seq)
        else:
            ranges.append((seq, seq))
    return ranges
