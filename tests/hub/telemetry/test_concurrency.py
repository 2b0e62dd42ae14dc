"""Two hub workers receiving one key at once store it once (both backends).

On PostgreSQL the second worker's insert waits for the first transaction and
then skips the row (``ON CONFLICT DO NOTHING``): it must re-read the key and
answer as a replay. On SQLite the second transaction cannot even begin until
the first has committed, and then sees the key the ordinary way.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import select

from hub.telemetry.ingest import UsageHandler
from hub.telemetry.models import UsageConflict, UsagePeriodTotal, UsageRecord
from protocols.messages import decode_message
from protocols.usage_messages import UsageBatch
from tests.hub.analytics.conftest import T0
from tests.hub.telemetry.conftest import UsageShop, rec
from tests.hub.telemetry.test_ingest import count

NOW = T0 + timedelta(hours=1)


@pytest.mark.parametrize("code", ["duplicate", "conflict"])
def test_a_key_raced_by_two_workers_is_stored_once(usage: UsageShop, code: str) -> None:
    device = usage.devices[0]
    seq = 1
    first_batch = UsageBatch(records=(rec(seq, 2),))
    second_batch = UsageBatch(records=(rec(seq, 2 if code == "duplicate" else 7),))
    answers: list[str] = []
    errors: list[BaseException] = []

    def other_worker() -> None:
        try:
            with usage.factory() as s:
                (reply,) = UsageHandler().handle(
                    s, [(device, second_batch)], NOW + timedelta(seconds=1)
                )
                s.commit()
            answers.extend(r.code for r in decode_message(reply.payload).results)  # type: ignore[attr-defined]
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    with usage.factory() as first:
        UsageHandler().handle(first, [(device, first_batch)], NOW)  # inserted, not committed
        racer = threading.Thread(target=other_worker)
        racer.start()
        time.sleep(0.5)  # the other worker is now blocked on our uncommitted row
        first.commit()
    racer.join(30)
    assert not racer.is_alive() and not errors, errors
    assert answers == [code]
    assert count(usage.factory, UsageRecord, device_id=device, seq=seq) == 1
    assert usage.records(device)[-1].quantity == 2  # the first stays
    conflicts = count(usage.factory, UsageConflict, device_id=device, seq=seq)
    assert conflicts == (1 if code == "conflict" else 0)
    # The loser's quantity is not in the period totals a second time.
    with usage.factory() as s:
        totals = s.scalars(
            select(UsagePeriodTotal.quantity).where(UsagePeriodTotal.device_id == device)
        ).all()
    assert totals == [2]
