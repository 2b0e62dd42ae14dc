"""Floating seats: devices of an account share ``quantity`` seats of an entitlement.

A device may check out a seat of a product when it has an open activation of
an active, in-term floating entitlement of that product. Seats are released
on a clean release, on the device's last will (:func:`release_all_for_device`)
or when heartbeats stop (:func:`expire_stale_seats`).

The number of unreleased seats of an entitlement never exceeds its
``quantity``. :func:`checkout_seat` counts and inserts with the entitlement
row locked (``SELECT ... FOR UPDATE`` on PostgreSQL, where concurrent
checkouts queue on the row and each re-counts after the previous commit);
on SQLite, writers are serialised by the database lock, and a transaction
whose snapshot went stale fails with "database is locked" instead of
over-granting. A partial unique index keeps one open seat per (entitlement,
device).

These functions are device-driven (MQTT), so they take a device id rather
than a tenant; the tenant is the device's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hub.entitlements import history
from hub.entitlements.models import Activation, Entitlement, SeatLease
from hub.entitlements.service import term_end

SeatReason = Literal["granted", "already_held", "not_entitled", "no_seat_available"]


@dataclass(frozen=True, slots=True)
class SeatResult:
    """The answer to a seat checkout.

    Attributes:
        granted: whether the device now holds a seat.
        reason: ``granted``, ``already_held``, ``not_entitled`` or ``no_seat_available``.
        entitlement_id: the entitlement whose seat is held, when granted.
        device_ids: devices whose rights changed (the device, on a new seat).
    """

    granted: bool
    reason: SeatReason
    entitlement_id: str | None = None
    device_ids: frozenset[str] = field(default_factory=frozenset)


def _actor(device_id: str) -> str:
    return f"device:{device_id}"


def _candidates(
    session: Session, device_id: str, product_id: str, now: datetime
) -> list[Entitlement]:
    """Floating entitlements of the product the device may draw a seat from."""
    query = (
        select(Entitlement)
        .join(Activation, Activation.entitlement_id == Entitlement.id)
        .where(
            Activation.device_id == device_id,
            Activation.deactivated_at.is_(None),
            or_(Activation.temporary_until.is_(None), Activation.temporary_until > now),
            Entitlement.product_id == product_id,
            Entitlement.license_model == "floating",
            Entitlement.status == "active",
            Entitlement.starts_at <= now,
        )
        .order_by(Entitlement.created_at, Entitlement.id)
    )
    return [e for e in session.scalars(query) if (end := term_end(e)) is None or now < end]


def _open_seat(session: Session, entitlement_ids: list[str], device_id: str) -> SeatLease | None:
    return session.scalar(
        select(SeatLease).where(
            SeatLease.entitlement_id.in_(entitlement_ids),
            SeatLease.device_id == device_id,
            SeatLease.released_at.is_(None),
        )
    )


def _try_take(session: Session, ent_id: str, device_id: str, now: datetime) -> Entitlement | None:
    """Lock the entitlement, count its open seats, take one if free."""
    ent = session.scalar(
        select(Entitlement)
        .where(Entitlement.id == ent_id, Entitlement.status == "active")
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if ent is None:
        return None
    held = session.scalar(
        select(func.count()).where(
            SeatLease.entitlement_id == ent_id, SeatLease.released_at.is_(None)
        )
    )
    if (held or 0) >= ent.quantity:
        return None
    seat = SeatLease(
        tenant_id=ent.tenant_id,
        entitlement_id=ent_id,
        device_id=device_id,
        acquired_at=now,
        heartbeat_at=now,
    )
    try:
        with session.begin_nested():
            session.add(seat)
    except IntegrityError:
        return None
    return ent


def checkout_seat(
    session: Session, *, device_id: str, product_id: str, now: datetime
) -> SeatResult:
    """Give the device a seat of the product, or say why not.

    Holding a seat already counts as a heartbeat and answers ``already_held``.
    """
    candidates = _candidates(session, device_id, product_id, now)
    if not candidates:
        return SeatResult(granted=False, reason="not_entitled")
    held = _open_seat(session, [e.id for e in candidates], device_id)
    if held is not None:
        held.heartbeat_at = now
        return SeatResult(granted=True, reason="already_held", entitlement_id=held.entitlement_id)
    for candidate in candidates:
        ent = _try_take(session, candidate.id, device_id, now)
        if ent is not None:
            history.log(
                session,
                ent,
                actor=_actor(device_id),
                action="seat.checkout",
                now=now,
                device_id=device_id,
            )
            return SeatResult(
                granted=True,
                reason="granted",
                entitlement_id=ent.id,
                device_ids=frozenset({device_id}),
            )
    return SeatResult(granted=False, reason="no_seat_available")


def _release(
    session: Session, seats: list[SeatLease], *, actor: str, now: datetime, reason: str
) -> frozenset[str]:
    for seat in seats:
        seat.released_at = now
        seat.release_reason = reason
        ent = session.get_one(Entitlement, seat.entitlement_id)
        history.log(
            session,
            ent,
            actor=actor,
            action="seat.release",
            now=now,
            device_id=seat.device_id,
            reason=reason,
        )
    return frozenset(seat.device_id for seat in seats)


def _open_seats_of(session: Session, device_id: str, product_id: str | None) -> list[SeatLease]:
    query = select(SeatLease).where(
        SeatLease.device_id == device_id, SeatLease.released_at.is_(None)
    )
    if product_id is not None:
        query = query.join(Entitlement, Entitlement.id == SeatLease.entitlement_id).where(
            Entitlement.product_id == product_id
        )
    return list(session.scalars(query.order_by(SeatLease.id)))


def release_seat(
    session: Session, *, device_id: str, product_id: str, now: datetime
) -> frozenset[str]:
    """Clean release of the device's seat of the product.

    Returns:
        ``{device_id}`` when a seat was released, else empty.
    """
    seats = _open_seats_of(session, device_id, product_id)
    return _release(session, seats, actor=_actor(device_id), now=now, reason="released")


def release_all_for_device(
    session: Session, device_id: str, now: datetime, *, reason: str = "disconnected"
) -> frozenset[str]:
    """Release every seat the device holds (its last will, or a clean disconnect).

    Returns:
        ``{device_id}`` when a seat was released, else empty.
    """
    seats = _open_seats_of(session, device_id, None)
    return _release(session, seats, actor="system", now=now, reason=reason)


def heartbeat_seat(session: Session, *, device_id: str, product_id: str, now: datetime) -> bool:
    """Refresh the device's seat of the product; ``False`` when it holds none."""
    seats = _open_seats_of(session, device_id, product_id)
    for seat in seats:
        seat.heartbeat_at = now
    return bool(seats)


def expire_stale_seats(session: Session, now: datetime, timeout: timedelta) -> list[str]:
    """Release seats whose last heartbeat is ``timeout`` old or older.

    Returns:
        The devices that lost a seat, sorted.
    """
    stale = list(
        session.scalars(
            select(SeatLease)
            .where(SeatLease.released_at.is_(None), SeatLease.heartbeat_at <= now - timeout)
            .order_by(SeatLease.id)
            .with_for_update()
        )
    )
    return sorted(_release(session, stale, actor="system", now=now, reason="heartbeat_timeout"))


def list_seats(session: Session, entitlement_id: str) -> list[SeatLease]:
    """The open seats of an entitlement, oldest first (callers check the tenant)."""
    query = select(SeatLease).where(
        SeatLease.entitlement_id == entitlement_id, SeatLease.released_at.is_(None)
    )
    return list(session.scalars(query.order_by(SeatLease.acquired_at, SeatLease.id)))
