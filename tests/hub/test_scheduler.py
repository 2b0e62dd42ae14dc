"""Scheduled jobs: a busy database skips a run with a warning; other errors still fail it."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from hub import scheduler
from hub.db.busy import is_busy
from hub.plugins import PeriodicJob
from hub.rollouts.engine import RolloutEngine

SECRET = "$7$101$c2FsdA==$aGFzaA=="


def _locked() -> OperationalError:
    sqlite_error = sqlite3.OperationalError("database is locked")
    sqlite_error.sqlite_errorcode = 5  # SQLITE_BUSY, as the driver sets it
    return OperationalError(
        "UPDATE devices SET mqtt_password_hash=?", {"hash": SECRET}, sqlite_error
    )


def _busy_factory() -> Any:
    raise _locked()


def test_a_busy_database_skips_the_run_with_a_warning_and_no_parameters(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def run() -> None:
        raise _locked()

    with caplog.at_level("WARNING", logger=scheduler.__name__):
        scheduler.skip_when_busy("nightly", run)()
    [record] = caplog.records
    assert record.levelname == "WARNING"
    assert record.getMessage() == (
        "job nightly skipped, the next run retries: database busy (database is locked)"
    )
    assert SECRET not in caplog.text and record.exc_info is None


def _fault() -> OperationalError:
    sqlite_error = sqlite3.OperationalError("no such table: devices")
    sqlite_error.sqlite_errorcode = 1  # SQLITE_ERROR
    return OperationalError("SELECT 1", {}, sqlite_error)


@pytest.mark.parametrize("error", [ValueError("a bug"), _fault()], ids=["bug", "no-such-table"])
def test_other_errors_still_fail_the_run(error: Exception) -> None:
    def run() -> None:
        raise error

    with pytest.raises(type(error)):
        scheduler.skip_when_busy("nightly", run)()


class _PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"sqlstate {sqlstate}")
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("orig", "busy"),
    [
        (_locked().orig, True),
        (_fault().orig, False),
        (_PgError("55P03"), True),  # lock_not_available
        (_PgError("40P01"), True),  # deadlock
        (_PgError("08006"), True),  # connection failure
        (_PgError("42P01"), False),  # undefined_table
        (_PgError("53100"), False),  # disk_full
        (Exception("unknown driver"), False),
    ],
)
def test_is_busy_tells_lock_timeouts_and_lost_connections_from_faults(
    orig: Exception, busy: bool
) -> None:
    assert is_busy(OperationalError("SELECT 1", {}, orig)) is busy


def test_every_registered_job_skips_a_busy_database(caplog: pytest.LogCaptureFixture) -> None:
    ran: list[str] = []

    def plugin_job() -> None:
        ran.append("plugin")
        raise _locked()

    def clock() -> datetime:
        return datetime(2030, 1, 1, tzinfo=UTC)

    built = scheduler.build_scheduler(
        _busy_factory,  # type: ignore[arg-type]  # every session fails to open
        clock,
        presence_stale_seconds=120,
        claim_skew_seconds=300,
        maintenance=plugin_job,
        jobs=[PeriodicJob(job_id="plugin-job", seconds=10, run=plugin_job)],
    )
    with caplog.at_level("WARNING", logger=scheduler.__name__):
        for job in built.get_jobs():
            job.func()
    skipped = sorted(r.getMessage().split()[1] for r in caplog.records)
    assert skipped == ["claim-nonce-purge", "manifest-maintenance", "plugin-job", "presence-sweep"]
    assert ran == ["plugin", "plugin"]


def test_a_rollout_pass_on_a_busy_database_is_skipped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    published: list[object] = []
    engine = RolloutEngine(
        session_factory=_busy_factory,  # type: ignore[arg-type]
        clock=lambda: datetime(2030, 1, 1, tzinfo=UTC),
        publish=published.extend,
    )
    with caplog.at_level("WARNING", logger="hub.rollouts.engine"):
        engine.step("rollout-1")
    [record] = caplog.records
    assert "database busy (database is locked)" in record.getMessage()
    assert record.exc_info is None and SECRET not in caplog.text and published == []


def test_a_rollout_pass_meeting_a_database_fault_is_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def faulty() -> Any:
        raise _fault()

    engine = RolloutEngine(
        session_factory=faulty,  # type: ignore[arg-type]
        clock=lambda: datetime(2030, 1, 1, tzinfo=UTC),
        publish=lambda out: None,
    )
    with caplog.at_level("WARNING", logger="hub.rollouts.engine"):
        engine.step("rollout-1")
    [record] = caplog.records
    assert record.levelname == "ERROR" and "no such table: devices" in record.getMessage()
