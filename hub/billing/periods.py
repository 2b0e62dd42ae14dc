"""Monthly billing periods anchored on a start instant (pure; no clock, no database).

Period ``n`` (0-based) of an account anchored at ``anchor`` is the half-open
interval ``[add_months(anchor, n), add_months(anchor, n + 1))``. Every bound
is computed **from the anchor**, never from the previous bound, so short
months do not make the anchor drift: a subscription started on 31 January
at 10:00 UTC bills 31 Jan -> 28 Feb (29 in a leap year) -> 31 Mar -> 30 Apr
-> 31 May, each bound at 10:00 UTC. A day that does not exist in a month
(29, 30, 31) is clamped to that month's last day. Times are UTC.
"""

from __future__ import annotations

import calendar
from datetime import UTC, datetime

_MAX_PERIODS = 12 * 1000


def add_months(anchor: datetime, months: int) -> datetime:
    """``anchor`` moved ``months`` calendar months on, its day clamped to the month's end.

    Args:
        anchor: a timezone-aware instant (converted to UTC).
        months: how many months to add (``>= 0``).

    Returns:
        The instant in UTC with the anchor's time of day.
    """
    if months < 0:
        raise ValueError("months must not be negative")
    base = anchor.astimezone(UTC)
    index = base.month - 1 + months
    year, month = base.year + index // 12, index % 12 + 1
    day = min(base.day, calendar.monthrange(year, month)[1])
    return base.replace(year=year, month=month, day=day)


def period_bounds(anchor: datetime, seq: int) -> tuple[datetime, datetime]:
    """The ``[start, end)`` of period ``seq`` of an account anchored at ``anchor``."""
    return add_months(anchor, seq), add_months(anchor, seq + 1)


def period_index(anchor: datetime, at: datetime) -> int:
    """The index of the period containing ``at`` (``at >= anchor``).

    Raises:
        ValueError: ``at`` is before the anchor.
    """
    if at < anchor:
        raise ValueError("the instant is before the anchor")
    base, moment = anchor.astimezone(UTC), at.astimezone(UTC)
    guess = max(0, (moment.year - base.year) * 12 + moment.month - base.month - 1)
    while add_months(anchor, guess + 1) <= moment:
        guess += 1
        if guess > _MAX_PERIODS:  # pragma: no cover - a thousand years of months
            raise ValueError("instant too far after the anchor")
    return guess
