"""Gaps in a device's sequence: possible lost usage, maintained per batch.

A device numbers its records 1, 2, 3 ... within each boot epoch, without
holes. ``usage_sequences`` keeps, per ``(device, boot_epoch)``, the highest
sequence the hub has seen (stored, quarantined or rejected: every record the
hub answered). When a batch brings sequences above that mark, every run of
numbers between the old mark and the new one that the batch does not bring
either becomes an open row of ``usage_gaps`` (so a first record with seq 5
opens the gap 1..4). When a later batch brings sequences at or below the mark,
they fill open gaps: a gap shrinks or splits around them, and a gap whose
every sequence arrived is closed (``closed_at``; its range is what was still
missing before that last fill). Open gaps are what may have been lost.

The loss of the *last* records of an epoch cannot be seen this way (nothing
follows them); a device that restarts starts a new epoch at seq 1.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.telemetry.models import UsageGap, UsageSequence
from hub.telemetry.store import IN_CHUNK, Writer, chunks

Pair = tuple[str, int]
"""``(device_id, boot_epoch)``."""
_MAX_EPOCHS = 100  # distinct epochs named in one marks query (bound variables)


def holes(high: int, seqs: Iterable[int]) -> list[tuple[int, int]]:
    """The missing runs between ``high`` and the largest of ``seqs`` above it."""
    runs: list[tuple[int, int]] = []
    previous = high
    for seq in sorted({s for s in seqs if s > high}):
        if seq > previous + 1:
            runs.append((previous + 1, seq - 1))
        previous = seq
    return runs


def remaining(first: int, last: int, filled: Iterable[int]) -> list[tuple[int, int]]:
    """What is still missing of ``first..last`` once ``filled`` arrived."""
    inside = sorted({s for s in filled if first <= s <= last})
    runs: list[tuple[int, int]] = []
    start = first
    for seq in inside:
        if seq > start:
            runs.append((start, seq - 1))
        start = seq + 1
    if start <= last:
        runs.append((start, last))
    return runs


class SequenceBook:
    """High-water marks of one batch's devices, and what the batch brought."""

    def __init__(self) -> None:
        self.high: dict[Pair, int] = {}
        self._seen: dict[Pair, set[int]] = defaultdict(set)
        self._tenants: dict[Pair, str] = {}

    def load(self, session: Session, pairs: Iterable[Pair]) -> None:
        """Read the marks of ``pairs`` (one query per chunk of devices).

        Only the batch's epochs are read: a device keeps a mark per boot epoch
        it ever used (one more per restart), and reading all of them made this
        grow with the device's age.
        """
        wanted = set(pairs)
        epochs = sorted({epoch for _, epoch in wanted})
        for chunk in chunks(sorted({device for device, _ in wanted}), IN_CHUNK - _MAX_EPOCHS):
            query = select(
                UsageSequence.device_id, UsageSequence.boot_epoch, UsageSequence.high_seq
            ).where(UsageSequence.device_id.in_(chunk))
            if len(epochs) <= _MAX_EPOCHS:  # else a rare mixed batch: filtered below
                query = query.where(UsageSequence.boot_epoch.in_(epochs))
            rows = session.execute(query)
            for device_id, epoch, high in rows:
                if (device_id, epoch) in wanted:
                    self.high[(device_id, epoch)] = high

    def mark(self, seen: Iterable[tuple[str, str, int, int]]) -> None:
        """The hub answered these ``(tenant, device, epoch, seq)`` records: not missing."""
        by_pair = self._seen
        for tenant_id, device_id, epoch, seq in seen:
            pair = (device_id, epoch)
            by_pair[pair].add(seq)
            self._tenants[pair] = tenant_id

    def save(self, session: Session, writer: Writer, now: datetime) -> int:
        """Open new gaps, fill old ones, raise the marks; returns the gaps opened."""
        opened: list[tuple[str, Pair, int, int]] = []
        fills: dict[Pair, set[int]] = {}
        marks: list[tuple[str, Pair, int]] = []
        for pair, seqs in self._seen.items():
            high = self.high.get(pair, 0)
            tenant_id = self._tenants[pair]
            opened.extend((tenant_id, pair, a, b) for a, b in holes(high, seqs))
            below = {s for s in seqs if s <= high}
            if below:
                fills[pair] = below
            top = max(seqs)
            if top > high:
                marks.append((tenant_id, pair, top))
        if fills:
            _fill(session, fills, now)
        stamp = writer.moment(now)
        writer.insert(
            "usage_gaps",
            ("tenant_id", "device_id", "boot_epoch", "first_missing_seq", "last_missing_seq",
             "detected_at"),
            [(t, device, epoch, a, b, stamp) for t, (device, epoch), a, b in opened],
        )  # fmt: skip
        writer.upsert(
            "usage_sequences",
            ("device_id", "boot_epoch", "tenant_id", "high_seq", "updated_at"),
            [(device, epoch, t, top, stamp) for t, (device, epoch), top in marks],
            conflict=("device_id", "boot_epoch"),
            greatest=("high_seq",),
            replace=("updated_at",),
        )
        return len(opened)


def _fill(session: Session, fills: dict[Pair, set[int]], now: datetime) -> None:
    """Shrink, split or close the open gaps that ``fills`` land in."""
    devices = sorted({device for device, _ in fills})
    gaps: list[UsageGap] = []
    for chunk in chunks(devices):
        gaps.extend(
            session.scalars(
                select(UsageGap).where(UsageGap.device_id.in_(chunk), UsageGap.closed_at.is_(None))
            )
        )
    for gap in gaps:
        filled = fills.get((gap.device_id, gap.boot_epoch))
        if not filled or not any(
            gap.first_missing_seq <= s <= gap.last_missing_seq for s in filled
        ):
            continue
        runs = remaining(gap.first_missing_seq, gap.last_missing_seq, filled)
        if not runs:
            gap.closed_at = now
            continue
        gap.first_missing_seq, gap.last_missing_seq = runs[0]
        for first, last in runs[1:]:
            session.add(
                UsageGap(
                    tenant_id=gap.tenant_id,
                    device_id=gap.device_id,
                    boot_epoch=gap.boot_epoch,
                    first_missing_seq=first,
                    last_missing_seq=last,
                    detected_at=gap.detected_at,
                )
            )
    session.flush()
