"""Over-cap marking: a device's covered usage per metered feature and cap period.

A covered record is marked ``over_cap`` when it pushes its device's total for
that feature in the record's period (UTC calendar day or month of
``recorded_at``, the feature's ``period``, as the agent counts it) past the
cap of the grants covering it: ``total_before + quantity > cap``. Totals are
counted in arrival order, so of records arriving out of order the later
arrivals are the ones marked. ``usage_period_totals`` holds the running
totals; a batch reads the rows it needs once and adds its increments with one
upsert (``quantity = quantity + increment``), which stays right when two hub
workers add to one row.
"""

from __future__ import annotations

import calendar
import functools
import time
from collections.abc import Collection
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.telemetry.models import MICRO, UsagePeriodTotal
from hub.telemetry.records import micro_of
from hub.telemetry.store import Writer, chunks

# Period totals saturate here (micro-units; 4.6e12 units): SQLite stores them as
# 64-bit integers, and a few records at the 10^12 maximum would overflow it and
# fail every batch they travel in. Any cap below the ceiling is still detected.
TOTAL_CEILING = 2**62

DAY = 86_400
TotalKey = tuple[str, str, str, int]
"""``(device_id, meter, period, period_start)`` with the start in Unix seconds."""


def period_start(period: str, ts: int) -> int:
    """Start (Unix seconds, UTC) of the ``day`` or ``month`` holding ``ts``."""
    day = ts - ts % DAY
    if period == "day":
        return day
    return _month_start(day)


@functools.lru_cache(maxsize=4096)
def _month_start(day: int) -> int:
    moment = time.gmtime(day)
    return calendar.timegm((moment.tm_year, moment.tm_mon, 1, 0, 0, 0))


class CapTracker:
    """Running period totals for one batch: read once, incremented per record."""

    def __init__(self) -> None:
        self._totals: dict[TotalKey, int] = {}  # micro-units
        self._increments: dict[TotalKey, int] = {}
        self._tenants: dict[TotalKey, str] = {}

    def load(self, session: Session, keys: Collection[TotalKey]) -> None:
        """Read the stored totals of ``keys`` (one query per chunk of devices)."""
        wanted = set(keys)
        devices = sorted({key[0] for key in wanted})
        meters = sorted({key[1] for key in wanted})
        starts = sorted({datetime.fromtimestamp(key[3], UTC) for key in wanted})
        for chunk in chunks(devices):
            rows = session.execute(
                select(
                    UsagePeriodTotal.device_id,
                    UsagePeriodTotal.meter,
                    UsagePeriodTotal.period,
                    UsagePeriodTotal.period_start,
                    UsagePeriodTotal.quantity,
                ).where(
                    UsagePeriodTotal.device_id.in_(chunk),
                    UsagePeriodTotal.meter.in_(meters),
                    UsagePeriodTotal.period_start.in_(starts),
                )
            )
            for device_id, meter, period, start, quantity in rows:
                key = (device_id, meter, period, int(start.timestamp()))
                if key in wanted:
                    self._totals[key] = micro_of(quantity)

    def add(self, tenant_id: str, key: TotalKey, micro: int, cap: int | None) -> bool:
        """Count ``micro`` units in its period; returns whether the total went past ``cap``."""
        before = self._totals.get(key, 0)
        total = min(before + micro, TOTAL_CEILING)
        self._totals[key] = total
        self._increments[key] = self._increments.get(key, 0) + (total - before)
        self._tenants[key] = tenant_id
        return cap is not None and total > cap * MICRO

    def save(self, writer: Writer) -> None:
        """Add this batch's increments to the stored totals (one upsert)."""
        rows = [
            (
                device_id,
                meter,
                period,
                writer.stamp(start),
                self._tenants[(device_id, meter, period, start)],
                writer.quantity(increment),
            )
            for (device_id, meter, period, start), increment in self._increments.items()
        ]
        writer.upsert(
            "usage_period_totals",
            ("device_id", "meter", "period", "period_start", "tenant_id", "quantity"),
            rows,
            conflict=("device_id", "meter", "period", "period_start"),
            add=("quantity",),
        )
