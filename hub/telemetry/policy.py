"""The ingestion policy: the skew window and key limits, with documented defaults.

``hub serve`` uses :data:`DEFAULT_POLICY` (the hub's settings have no usage
knobs yet); tests and the benchmark pass their own :class:`UsagePolicy`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

MAX_KEY = 2**63 - 1
"""The largest ``boot_epoch`` or ``seq`` the hub stores (a signed 64-bit column)."""

FUTURE_SKEW_SECONDS = 300
MAX_AGE_SECONDS = 90 * 86_400


@dataclass(frozen=True, slots=True)
class UsagePolicy:
    """How far a record's timestamp may stray from the hub's clock and still be billed.

    A record is *quarantined* (kept, counted, never billed) when its ``ts`` is
    more than ``future_skew_seconds`` after the hub's ``now`` (reason
    ``future``) or more than ``max_age_seconds`` before it (reason
    ``too_old``). The defaults, 300 s ahead and 90 days behind, bill a device
    that was offline for a week (or a month) and refuse clocks that are
    plainly wrong.

    Attributes:
        future_skew_seconds: tolerated lead of the device clock (>= 0).
        max_age_seconds: oldest accepted record, relative to ``now`` (> 0).
    """

    future_skew_seconds: int = FUTURE_SKEW_SECONDS
    max_age_seconds: int = MAX_AGE_SECONDS

    def __post_init__(self) -> None:
        """Refuse a window that cannot work."""
        if self.future_skew_seconds < 0 or self.max_age_seconds <= 0:
            raise ValueError("future_skew_seconds must be >= 0 and max_age_seconds > 0")

    def window(self, now: datetime) -> tuple[int, int]:
        """The accepted ``ts`` range at ``now``: ``(earliest, latest)``, inclusive, Unix seconds."""
        moment = int(now.timestamp())
        return moment - self.max_age_seconds, moment + self.future_skew_seconds

    def horizon(self, now: datetime) -> datetime:
        """The oldest accepted instant at ``now``."""
        return now - timedelta(seconds=self.max_age_seconds)


DEFAULT_POLICY = UsagePolicy()
