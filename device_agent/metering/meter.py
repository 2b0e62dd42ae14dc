"""The device application's metering API: ``meter.record("api_calls", 1)``.

:meth:`Meter.record` validates the record with the wire rules
(:func:`protocols.usage_messages.parse_record`), checks the meter against the
device's manifest (it must be an enabled feature), enforces the feature's cap
for the current period offline, and stores the record durably with a freshly
minted key, all before it returns. It returns a :class:`Recorded` or raises a
:class:`~device_agent.metering.errors.UsageRefused`; nothing is dropped
silently.

Caps follow :mod:`device_agent.features`: a capped entry counts usage per UTC
``day`` or ``month`` (time is ``max(now, signed time anchor)``, so a clock set
back never reopens a spent period); beyond the cap ``overage`` decides:
``block`` (the default) refuses, ``allow`` records, ``flag`` records and counts
the units beyond the cap. The meter keeps its period counters in the usage
buffer, updated in the same transaction as the record, so a crash can neither
count a record that was not stored nor store one that was not counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from device_agent.features import period_start
from device_agent.metering.buffer import CapRule, PeriodUsage, UsageBuffer
from device_agent.metering.entitlements import Entitlements
from device_agent.metering.errors import InvalidUsage, NotEntitled
from protocols.errors import MessageError
from protocols.manifest import FeatureEntry
from protocols.usage_messages import RawUsageRecord, UsageRecord, parse_record


@dataclass(frozen=True, slots=True)
class Recorded:
    """A stored usage record.

    Attributes:
        record: The record with its idempotency key ``(boot_epoch, seq)``.
        cap: The feature's cap per period (``None``: not capped).
        used: Units counted in the current period, this record included.
        over_cap: The period is beyond its cap (recorded under ``allow``/``flag``).
    """

    record: UsageRecord
    cap: int | None = None
    used: Decimal | None = None
    over_cap: bool = False


def validate(meter: str, quantity: int | float, dim: str | None) -> UsageRecord:
    """Check ``meter``, ``quantity`` and ``dim`` with the wire rules.

    Raises:
        InvalidUsage: with the reason (negative, NaN, infinite or huge quantity,
            bad meter or dim text).
    """
    items = (0, 0, meter, quantity, 0) if dim is None else (0, 0, meter, quantity, 0, dim)
    try:
        return parse_record(RawUsageRecord(items))
    except MessageError as exc:
        raise InvalidUsage(str(exc)) from None


class Meter:
    """Records metered usage into the durable buffer, enforcing the manifest's caps."""

    def __init__(
        self,
        buffer: UsageBuffer,
        entitlements: Entitlements,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Record into ``buffer`` what ``entitlements`` allow, at ``clock`` time."""
        self.buffer = buffer
        self._entitlements = entitlements
        self._clock = clock

    def record(
        self, meter: str, quantity: int | float, *, dim: str | None = None, now: int | None = None
    ) -> Recorded:
        """Record ``quantity`` units of ``meter`` (optionally for dimension ``dim``).

        Args:
            meter: The metered feature's key, as in the manifest.
            quantity: Units used: a finite number in ``0..10**12`` (floats allowed).
            dim: A dimension value for "unique count" meters (1..64 characters).
            now: Unix time of the usage (default: the clock).

        Returns:
            What was stored; the record is durable when this returns.

        Raises:
            InvalidUsage: a value breaks the wire rules.
            NotEntitled: ``meter`` is not an enabled feature of the manifest.
            CapExceeded: over the period's cap under the ``block`` policy.
            BufferFull: the buffer holds its bound (counted in ``dropped``).
            StateError: the buffer could not be written (nothing stored).
        """
        valid = validate(meter, quantity, dim)
        at = int(self._clock()) if now is None else now
        entry = self._entitlements.entry(valid.meter, now=at)
        if entry is None:
            raise NotEntitled(valid.meter)
        rule = self._rule(entry, at)
        appended = self.buffer.append(
            valid.meter, valid.quantity, ts=max(at, 0), dim=valid.dim, rule=rule
        )
        return Recorded(
            appended.record,
            cap=rule.cap if rule else None,
            used=appended.used,
            over_cap=appended.over_cap,
        )

    def usage(self, meter: str) -> PeriodUsage | None:
        """The meter's counted usage in its current cap period (``None``: never capped)."""
        return self.buffer.period_usage(meter)

    def close(self) -> None:
        """Close the buffer connection."""
        self.buffer.close()

    def __enter__(self) -> Meter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _rule(self, entry: FeatureEntry, at: int) -> CapRule | None:
        if entry.cap is None or entry.period is None:
            return None
        start = period_start(entry.period, self._entitlements.effective_now(at))
        return CapRule(entry.period, start, entry.cap, entry.overage or "block")


__all__ = ["Meter", "Recorded", "validate"]
