"""The bulk writer's storage forms, on every backend."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from sqlalchemy.orm import Session

from hub.telemetry import store
from hub.telemetry.store import Writer


def _expected(writer: Writer, ts: int) -> object:
    moment = datetime.fromtimestamp(ts, UTC)
    return moment.replace(tzinfo=None).isoformat(" ", "microseconds") if writer.sqlite else moment


def test_stamps_are_right_across_the_memo_and_its_reset(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``stamp`` remembers formatted seconds; a full memo is cleared, never wrong."""
    monkeypatch.setattr(store, "_SECONDS_MEMO", 50)
    writer = Writer(session)
    rng = random.Random(7)
    seconds = [rng.randrange(0, 253_402_300_799) for _ in range(40)]
    seconds += [0, 86_399, 86_400, 951_782_400, 4_102_444_800]  # day edges, 2000-02-29
    for ts in seconds * 3 + [rng.randrange(0, 2**33) for _ in range(200)]:
        assert writer.stamp(ts) == _expected(writer, ts)
    assert len(writer._seconds) <= 50
