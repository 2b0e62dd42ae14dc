"""Device presence: online/offline and last seen, from status, hello and last will.

The broker publishes a device's last will (``online = false``) when it vanishes
without a clean disconnect; heartbeats keep ``last_seen_at`` fresh; and a
scheduled sweep marks devices offline whose heartbeats stopped while the hub
could not hear the will (for example while it was restarting).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from hub.mqtt.outbound import Outbound
from hub.registry.models import Device
from protocols import topics
from protocols.messages import Hello, State, Status, encode_message

log = logging.getLogger(__name__)

# Ids per IN (...) query: under SQLite's historical limit of 999 bound variables.
_IN_CHUNK = 900


def claimed_ids(session: Session, device_ids: Iterable[str]) -> set[str]:
    """Which of ``device_ids`` may speak (claimed), one query per chunk; others logged.

    Reads through the session (it autoflushes first), so it sees the
    transaction's own changes as :func:`claimed_device` does.
    """
    wanted = sorted(set(device_ids))
    claimed: set[str] = set()
    for start in range(0, len(wanted), _IN_CHUNK):
        chunk = wanted[start : start + _IN_CHUNK]
        claimed.update(
            session.scalars(
                select(Device.id).where(Device.id.in_(chunk), Device.status == "claimed")
            )
        )
    for device_id in wanted:
        if device_id not in claimed:
            log.warning("presence from unknown or unclaimed device %s dropped", device_id)
    return claimed


def claimed_device(session: Session, device_id: str) -> Device | None:
    """The device if it may speak (claimed); ``None``, logged, otherwise."""
    device = session.get(Device, device_id)
    if device is None or device.status != "claimed":
        # The broker only admits claimed devices; this is a race with a
        # reset or a disable, so the message is dropped, not answered.
        log.warning("presence from unknown or unclaimed device %s dropped", device_id)
        return None
    return device


def handle_status(session: Session, *, device_id: str, status: Status, now: datetime) -> None:
    """Record a presence update (heartbeat, clean offline, or last will)."""
    device = claimed_device(session, device_id)
    if device is None:
        return
    device.online = status.online
    device.last_seen_at = now


def handle_hello(
    session: Session, *, device_id: str, hello: Hello, now: datetime, manifest_seq: int = 0
) -> list[Outbound]:
    """A device (re)connected: mark it online and answer with the hub's state.

    ``manifest_seq`` is the sequence of the device's current manifest (0: none).
    """
    device = claimed_device(session, device_id)
    if device is None:
        return []
    device.online = True
    device.last_seen_at = now
    device.last_connect_at = now
    log.debug("hello from %s (agent %s, boot %d)", device_id, hello.agent_version, hello.boot_epoch)
    state = State(device_id=device_id, server_time=int(now.timestamp()), manifest_seq=manifest_seq)
    return [Outbound(topics.device_down(device_id, topics.DownKind.STATE), encode_message(state))]


def sweep_stale(session: Session, *, now: datetime, stale_after: timedelta) -> int:
    """Mark offline every online device not seen for ``stale_after``; returns how many."""
    result = session.execute(
        update(Device)
        .where(Device.online.is_(True), Device.last_seen_at < now - stale_after)
        .values(online=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
