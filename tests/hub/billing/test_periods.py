"""Monthly periods from an anchor: day 29-31 clamping, no drift, contiguous bounds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.billing.periods import add_months, period_bounds, period_index


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_anchor_on_the_31st_clamps_without_drifting() -> None:
    anchor = utc(2031, 1, 31, 10, 30)
    ends = [period_bounds(anchor, n)[1] for n in range(6)]
    assert ends == [
        utc(2031, 2, 28, 10, 30),
        utc(2031, 3, 31, 10, 30),  # back to the 31st, not stuck on the 28th
        utc(2031, 4, 30, 10, 30),
        utc(2031, 5, 31, 10, 30),
        utc(2031, 6, 30, 10, 30),
        utc(2031, 7, 31, 10, 30),
    ]


def test_leap_years_and_the_29th() -> None:
    assert add_months(utc(2032, 1, 29), 1) == utc(2032, 2, 29)
    assert add_months(utc(2031, 1, 29), 1) == utc(2031, 2, 28)
    assert add_months(utc(2032, 2, 29), 12) == utc(2033, 2, 28)
    assert add_months(utc(2032, 1, 30), 1) == utc(2032, 2, 29)
    assert add_months(utc(2031, 12, 15), 1) == utc(2032, 1, 15)


def test_offsets_are_converted_to_utc() -> None:
    anchor = datetime(2031, 3, 1, 1, 0, tzinfo=timezone(timedelta(hours=2)))  # Feb 28 23:00 UTC
    assert add_months(anchor, 1) == utc(2031, 3, 28, 23)


def test_period_index_edges() -> None:
    anchor = utc(2031, 1, 31, 12)
    assert period_index(anchor, anchor) == 0
    assert period_index(anchor, utc(2031, 2, 28, 11, 59, 59)) == 0
    assert period_index(anchor, utc(2031, 2, 28, 12)) == 1  # the end belongs to the next
    assert period_index(anchor, utc(2031, 3, 31, 11)) == 1
    assert period_index(anchor, utc(2032, 1, 31, 12)) == 12
    with pytest.raises(ValueError):
        period_index(anchor, anchor - timedelta(microseconds=1))
    with pytest.raises(ValueError):
        add_months(anchor, -1)


anchors = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@given(anchor=anchors, offset=st.integers(min_value=0, max_value=40 * 366 * 86_400))
def test_periods_tile_time(anchor: datetime, offset: int) -> None:
    at = anchor + timedelta(seconds=offset)
    index = period_index(anchor, at)
    start, end = period_bounds(anchor, index)
    assert start <= at < end
    assert period_bounds(anchor, index + 1)[0] == end
    assert timedelta(days=28) <= end - start <= timedelta(days=31)
    assert start.time() == anchor.time()
