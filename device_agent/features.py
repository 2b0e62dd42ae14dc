"""What the device application asks: may I use this feature, how much, and can I consume.

:class:`Features` answers from the manifest held by a
:class:`~device_agent.trust_store.TrustStore`, so it works offline. Without a
manifest that counts (none received, dropped by a key rotation, lease run out)
every answer is the safe default: nothing enabled, limit 0, nothing consumed.

Metered features (an entry with ``cap`` per ``period``) are enforced locally.
Usage is counted per feature and period (UTC calendar day, or UTC calendar
month) and written atomically to ``state_dir/usage.cbor`` after every change,
so a restart never resets a counter. Beyond the cap the entry's ``overage``
decides: ``block`` (the default) refuses, ``allow`` goes on, ``flag`` goes on
and counts the units beyond the cap in :attr:`Usage.over` for reporting.

Periods only move forward: time is ``max(now, signed time anchor)``, and a
clock turned back into an earlier period keeps counting in the current one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from device_agent.errors import StateError
from device_agent.storage import atomic_write, read_optional
from device_agent.trust import effective_now
from device_agent.trust_store import TrustStore
from protocols import cbor
from protocols.errors import ProtocolError
from protocols.manifest import FeatureEntry, Period

USAGE_FILE = "usage.cbor"
USAGE_FORMAT = 1
_LAST_SECOND = 253_402_300_799  # 9999-12-31T23:59:59Z, the end of datetime's range


@dataclass(frozen=True, slots=True)
class Usage:
    """Units consumed of one metered feature in its current period.

    Attributes:
        period: ``"day"`` or ``"month"``.
        period_start: Start of the period, Unix seconds (UTC midnight / first of month).
        used: Units consumed in the period, overage included.
        over: Units consumed beyond the cap under the ``flag`` policy.
    """

    period: str
    period_start: int
    used: int = 0
    over: int = 0


def period_start(period: Period, at: int) -> int:
    """Start of the UTC day or month containing ``at`` (Unix seconds, clamped to 0..9999)."""
    moment = datetime.fromtimestamp(min(max(at, 0), _LAST_SECOND), tz=UTC)
    start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "month":
        start = start.replace(day=1)
    return int(start.timestamp())


class Features:
    """The application-facing view of the device's entitlements."""

    def __init__(self, store: TrustStore, *, clock: Callable[[], float] = time.time) -> None:
        """Read persisted usage next to the trust state.

        Raises:
            StateError: ``usage.cbor`` exists but is unreadable or corrupt.
        """
        self._store = store
        self._clock = clock
        self._path = store.state_dir / USAGE_FILE
        self._usage = _load_usage(read_optional(self._path))

    def entry(self, key: str, *, now: int | None = None) -> FeatureEntry | None:
        """The feature's entry if it is enabled at ``now``, else ``None``."""
        at = self._now(now)
        entry = self._store.effective_features(now=at).get(key)
        return entry if entry is not None and entry.enabled else None

    def is_enabled(self, key: str, *, now: int | None = None) -> bool:
        """Whether the feature may be used at ``now`` (default: the clock)."""
        return self.entry(key, now=now) is not None

    def limit(self, key: str, *, now: int | None = None) -> int | None:
        """The feature's numeric ceiling.

        Returns:
            ``0`` when the feature is not enabled (the safe default), ``None``
            when it is enabled without a ceiling, else the ceiling.
        """
        entry = self.entry(key, now=now)
        return 0 if entry is None else entry.limit

    def usage(self, key: str) -> Usage | None:
        """The persisted usage of a metered feature, if any was counted."""
        return self._usage.get(key)

    def try_consume(self, key: str, units: int, *, now: int | None = None) -> bool:
        """Consume ``units`` of a feature if the manifest allows it, offline.

        A disabled feature is refused; an enabled feature without a cap always
        succeeds (nothing is counted). A capped feature succeeds while the
        period's usage stays within the cap, and beyond it per ``overage``.
        Counted usage is persisted before returning ``True``.

        Raises:
            ValueError: ``units`` is not a non-negative int.
            StateError: the new count could not be persisted (nothing consumed).
        """
        if isinstance(units, bool) or not isinstance(units, int) or units < 0:
            raise ValueError("units must be a non-negative int")
        at = self._now(now)
        entry = self.entry(key, now=at)
        if entry is None:
            return False
        if entry.cap is None or entry.period is None:
            return True
        current = self._current(key, entry.period, effective_now(self._store.state, at))
        used = current.used + units
        if used > entry.cap and (entry.overage or "block") == "block":
            return False
        over = current.over
        if entry.overage == "flag":
            over += min(units, used - entry.cap) if used > entry.cap else 0
        self._save({**self._usage, key: Usage(current.period, current.period_start, used, over)})
        return True

    def _now(self, now: int | None) -> int:
        return int(self._clock()) if now is None else now

    def _current(self, key: str, period: Period, at: int) -> Usage:
        start = period_start(period, at)
        held = self._usage.get(key)
        if held is None or held.period != period or start > held.period_start:
            return Usage(period, start)
        return held  # same period, or the clock went back: keep counting

    def _save(self, usage: dict[str, Usage]) -> None:
        doc = {
            "format": USAGE_FORMAT,
            "usage": {k: [u.period, u.period_start, u.used, u.over] for k, u in usage.items()},
        }
        atomic_write(self._path, cbor.encode(doc))
        self._usage = usage


def _load_usage(raw: bytes | None) -> dict[str, Usage]:
    if raw is None:
        return {}
    try:
        doc: Any = cbor.decode(raw)
        if not isinstance(doc, dict) or doc.get("format") != USAGE_FORMAT:
            raise StateError("unknown usage file format")
        usage = {}
        for key, (period, start, used, over) in doc["usage"].items():
            if period not in ("day", "month") or not all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 0
                for n in (start, used, over)
            ):
                raise StateError(f"bad usage record for {key!r}")
            usage[str(key)] = Usage(period, start, used, over)
    except (ProtocolError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StateError(f"corrupt usage file: {exc}") from exc
    return usage


__all__ = ["USAGE_FILE", "Features", "Usage", "period_start"]
