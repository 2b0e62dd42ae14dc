"""Manifest work outside the MQTT inbound path: REST changes and scheduled jobs.

Each unit of work runs in its own transaction and publishes only after its
commit. REST handlers reach it through ``app.state.on_devices_changed`` (called
after their own commit); the scheduler calls :meth:`ManifestPublisher.maintain`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from hub.entitlements.grants import IN_CHUNK
from hub.entitlements.seats import expire_stale_seats
from hub.entitlements.service import expire_due
from hub.manifests import service
from hub.mqtt.outbound import Outbound

log = logging.getLogger(__name__)

Work = Callable[[Session, datetime], list[Outbound]]
# One chunk per IN (...) list: issuing reads each chunk with one query per table.
FANOUT_CHUNK = IN_CHUNK


class ManifestPublisher:
    """Issues, renews and resends manifests, and publishes them after commit."""

    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session],
        policy: service.ManifestPolicy,
        clock: Callable[[], datetime],
        publish: Callable[[list[Outbound]], None],
        seat_timeout: timedelta,
    ) -> None:
        self._session_factory = session_factory
        self._policy = policy
        self._clock = clock
        self._publish = publish
        self._seat_timeout = seat_timeout

    def devices_changed(self, device_ids: Iterable[str]) -> None:
        """Re-issue the manifests of devices whose rights changed.

        Large changes go out in chunks, each committed and published before the
        next is signed, so devices verify and acknowledge early chunks while
        later ones are still being issued. Every device's manifest stands alone.
        """
        ids = sorted(frozenset(device_ids))
        for start in range(0, len(ids), FANOUT_CHUNK):
            self._run(self._issuer(ids[start : start + FANOUT_CHUNK]))

    def _issuer(self, device_ids: list[str]) -> Work:
        def work(session: Session, now: datetime) -> list[Outbound]:
            return service.issue(session, device_ids, now=now, policy=self._policy)

        return work

    def delivered(self, device_ids: list[str]) -> None:
        """The broker acknowledged these manifest publishes."""
        with self._session_factory() as session:
            service.mark_delivered(session, device_ids, now=self._clock())
            session.commit()

    def maintain(self) -> None:
        """The periodic job: expiries, stale seats, renewals, key rotations, resends."""
        self._run(self._expired)
        self._run(self._stale_seats)
        self._run(lambda s, now: service.renew_due(s, now=now, policy=self._policy))
        self._run(lambda s, now: service.reissue_rotated(s, now=now, policy=self._policy))
        self._run(lambda s, now: service.retry_unacknowledged(s, now=now, policy=self._policy))

    def _expired(self, session: Session, now: datetime) -> list[Outbound]:
        changed = expire_due(session, now=now)
        return service.issue(session, changed, now=now, policy=self._policy)

    def _stale_seats(self, session: Session, now: datetime) -> list[Outbound]:
        changed = expire_stale_seats(session, now, self._seat_timeout)
        return service.issue(session, changed, now=now, policy=self._policy)

    def _run(self, work: Work) -> None:
        with self._session_factory() as session:
            outbound = work(session, self._clock())
            session.commit()
        if outbound:
            log.info("publishing %d manifest deliveries", len(outbound))
            self._publish(outbound)
