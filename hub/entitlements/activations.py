"""Activations: binding entitlements to devices, and rehosting them.

Rules of :func:`activate` (checked with the entitlement row locked, ``SELECT
... FOR UPDATE`` on PostgreSQL, so concurrent activations cannot both take
the last slot):

- the entitlement and the device belong to the caller's tenant (else 404);
- the entitlement is ``active`` and its term (with grace) is not over;
- a device has at most one open activation per entitlement;
- except for floating entitlements, open activations never exceed
  ``quantity`` (node-locked and trial: exactly one device). A floating
  entitlement enrols any number of devices; its ``quantity`` bounds the
  seats they hold at once (:mod:`.seats`);
- a trial is used at most once per (device, product), ever (``trial_uses``).

**Rehost** (:func:`rehost`) moves an entitlement from a failed device to
its replacement in one transaction: the failed device's activation closes
at once (and any seat it held is released), and the replacement gets a new
activation. With ``temporary_seconds`` the replacement's activation is
*temporary*: it counts only until ``temporary_until = now +
temporary_seconds``. :func:`confirm_rehost` makes it permanent (clears
``temporary_until``); unconfirmed, it lapses on its own — the effective
features stop counting it at ``temporary_until`` exactly, the manifest lease
never extends past it, and the expiry job closes it. The failed device does
not get its rights back when the temporary license lapses.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hub.entitlements import history
from hub.entitlements.models import Activation, Entitlement, SeatLease, TrialUse
from hub.entitlements.service import (
    InvalidTransition,
    Outcome,
    close_lapsed,
    get_entitlement,
    term_end,
)
from hub.errors import Conflict, NotFound, ValidationFailed
from hub.registry.service import get_device


class AlreadyActivated(Conflict):
    """The device already has an open activation of this entitlement."""

    code = "already_activated"


class QuantityExceeded(Conflict):
    """Every device slot of the entitlement is taken."""

    code = "quantity_exceeded"


class TrialAlreadyUsed(Conflict):
    """The device has had a trial of this product before."""

    code = "trial_used"


class NotTemporary(Conflict):
    """Confirming a rehost whose activation is not temporary, or has lapsed."""

    code = "not_temporary"


def open_activation(session: Session, entitlement_id: str, device_id: str) -> Activation | None:
    """The device's open activation of the entitlement, if any."""
    return session.scalar(
        select(Activation).where(
            Activation.entitlement_id == entitlement_id,
            Activation.device_id == device_id,
            Activation.deactivated_at.is_(None),
        )
    )


def _close_lapsed_of(session: Session, ent: Entitlement, actor: str, now: datetime) -> None:
    lapsed = session.scalars(
        select(Activation).where(
            Activation.entitlement_id == ent.id,
            Activation.deactivated_at.is_(None),
            Activation.temporary_until.is_not(None),
            Activation.temporary_until <= now,
        )
    )
    for activation in list(lapsed):
        close_lapsed(session, activation, actor=actor, now=now)


def _require_usable(ent: Entitlement, now: datetime) -> None:
    if ent.status != "active":
        raise InvalidTransition(f"cannot activate a {ent.status} entitlement")
    end = term_end(ent)
    if end is not None and end <= now:
        raise InvalidTransition("the entitlement's term is over; renew it first")


def _check_slot(session: Session, ent: Entitlement, device_id: str) -> None:
    if open_activation(session, ent.id, device_id) is not None:
        raise AlreadyActivated(f"device {device_id} already has this entitlement")
    if ent.license_model == "floating":
        return
    used = session.scalar(
        select(func.count()).where(
            Activation.entitlement_id == ent.id, Activation.deactivated_at.is_(None)
        )
    )
    if (used or 0) >= ent.quantity:
        raise QuantityExceeded(
            f"all {ent.quantity} device slot(s) of this {ent.license_model} entitlement are taken"
        )


def _use_trial(session: Session, ent: Entitlement, device_id: str, now: datetime) -> None:
    if ent.license_model != "trial":
        return
    message = f"device {device_id} has already had a trial of this product"
    if session.get(TrialUse, (device_id, ent.product_id)) is not None:
        raise TrialAlreadyUsed(message)
    use = TrialUse(
        device_id=device_id,
        product_id=ent.product_id,
        tenant_id=ent.tenant_id,
        entitlement_id=ent.id,
        used_at=now,
    )
    try:
        with session.begin_nested():
            session.add(use)
    except IntegrityError as exc:
        raise TrialAlreadyUsed(message) from exc


def _new_activation(
    ent: Entitlement, device_id: str, now: datetime, temporary_until: datetime | None = None
) -> Activation:
    return Activation(
        id=str(uuid.uuid4()),
        tenant_id=ent.tenant_id,
        entitlement_id=ent.id,
        device_id=device_id,
        activated_at=now,
        temporary_until=temporary_until,
    )


def activate(
    session: Session,
    *,
    tenant_id: str,
    actor: str,
    now: datetime,
    entitlement_id: str,
    device_id: str,
    reason: str = "",
) -> Outcome[Activation]:
    """Activate an entitlement on a device.

    Returns:
        The activation; ``device_ids`` is ``{device_id}``.

    Raises:
        NotFound: no such entitlement or device for this tenant.
        InvalidTransition: the entitlement is not active, or its term is over.
        AlreadyActivated: the device already has it.
        QuantityExceeded: every device slot is taken (node-locked: the one).
        TrialAlreadyUsed: the device had a trial of this product before.
    """
    ent = get_entitlement(session, tenant_id, entitlement_id, lock=True)
    get_device(session, tenant_id, device_id)
    _require_usable(ent, now)
    _close_lapsed_of(session, ent, actor, now)
    _check_slot(session, ent, device_id)
    _use_trial(session, ent, device_id, now)
    activation = _new_activation(ent, device_id, now)
    session.add(activation)
    session.flush()
    history.log(
        session,
        ent,
        actor=actor,
        action="activation.create",
        now=now,
        device_id=device_id,
        reason=reason,
    )
    return Outcome(activation, frozenset({device_id}))


def _release_device_seat(
    session: Session, ent: Entitlement, device_id: str, now: datetime, reason: str
) -> bool:
    seat = session.scalar(
        select(SeatLease).where(
            SeatLease.entitlement_id == ent.id,
            SeatLease.device_id == device_id,
            SeatLease.released_at.is_(None),
        )
    )
    if seat is None:
        return False
    seat.released_at = now
    seat.release_reason = reason
    return True


def _require_open(session: Session, ent: Entitlement, device_id: str) -> Activation:
    activation = open_activation(session, ent.id, device_id)
    if activation is None:
        raise NotFound(f"device {device_id} has no open activation of entitlement {ent.id}")
    return activation


def deactivate(
    session: Session,
    *,
    tenant_id: str,
    actor: str,
    now: datetime,
    entitlement_id: str,
    device_id: str,
    reason: str = "",
) -> Outcome[Activation]:
    """Close a device's activation of an entitlement (and release its seat).

    Raises:
        NotFound: no such entitlement for this tenant, or no open activation.
    """
    ent = get_entitlement(session, tenant_id, entitlement_id, lock=True)
    activation = _require_open(session, ent, device_id)
    activation.deactivated_at = now
    seat = _release_device_seat(session, ent, device_id, now, "deactivated")
    history.log(
        session,
        ent,
        actor=actor,
        action="activation.delete",
        now=now,
        device_id=device_id,
        reason=reason,
        detail={"seat_released": seat} if seat else None,
    )
    return Outcome(activation, frozenset({device_id}))


def rehost(
    session: Session,
    *,
    tenant_id: str,
    actor: str,
    now: datetime,
    entitlement_id: str,
    from_device_id: str,
    to_device_id: str,
    temporary_seconds: int | None = None,
    reason: str = "",
) -> Outcome[Activation]:
    """Move an entitlement from a failed device to its replacement, atomically.

    Semantics in the module docstring. Allowed for any status but revoked.

    Returns:
        The replacement's activation; ``device_ids`` is both devices.

    Raises:
        NotFound: no such entitlement or device for this tenant, or the failed
            device has no open activation of the entitlement.
        ValidationFailed: both devices are the same.
        InvalidTransition: the entitlement is revoked.
        AlreadyActivated: the replacement already has the entitlement.
        TrialAlreadyUsed: a trial, and the replacement had one of this product.
    """
    if from_device_id == to_device_id:
        raise ValidationFailed("rehost needs two different devices")
    ent = get_entitlement(session, tenant_id, entitlement_id, lock=True)
    get_device(session, tenant_id, to_device_id)
    if ent.status == "revoked":
        raise InvalidTransition("cannot rehost a revoked entitlement")
    _close_lapsed_of(session, ent, actor, now)
    old = _require_open(session, ent, from_device_id)
    if open_activation(session, ent.id, to_device_id) is not None:
        raise AlreadyActivated(f"device {to_device_id} already has this entitlement")
    _use_trial(session, ent, to_device_id, now)
    old.deactivated_at = now
    _release_device_seat(session, ent, from_device_id, now, "rehosted")
    until = now + timedelta(seconds=temporary_seconds) if temporary_seconds else None
    new = _new_activation(ent, to_device_id, now, until)
    session.add(new)
    session.flush()
    detail = {
        "from_device_id": from_device_id,
        "to_device_id": to_device_id,
        "temporary_until": until.isoformat() if until else None,
    }
    for action, device in (("rehost.out", from_device_id), ("rehost.in", to_device_id)):
        history.log(
            session,
            ent,
            actor=actor,
            action=f"activation.{action}",
            now=now,
            device_id=device,
            reason=reason,
            detail=detail,
        )
    return Outcome(new, frozenset({from_device_id, to_device_id}))


def confirm_rehost(
    session: Session,
    *,
    tenant_id: str,
    actor: str,
    now: datetime,
    entitlement_id: str,
    device_id: str,
    reason: str = "",
) -> Outcome[Activation]:
    """Make a temporary (rehost) activation permanent before it lapses.

    Raises:
        NotFound: no such entitlement for this tenant, or no open activation.
        NotTemporary: the activation is not temporary, or it has lapsed.
    """
    ent = get_entitlement(session, tenant_id, entitlement_id, lock=True)
    activation = _require_open(session, ent, device_id)
    until = activation.temporary_until
    if until is None:
        raise NotTemporary("the activation is not temporary")
    if until <= now:
        raise NotTemporary("the temporary license has lapsed; activate the device again")
    activation.temporary_until = None
    history.log(
        session,
        ent,
        actor=actor,
        action="activation.confirm",
        now=now,
        device_id=device_id,
        reason=reason,
        detail={"temporary_until": until.isoformat()},
    )
    return Outcome(activation, frozenset({device_id}))


def list_activations(
    session: Session, tenant_id: str, entitlement_id: str, *, include_closed: bool = False
) -> list[Activation]:
    """An entitlement's activations, oldest first (open ones only by default).

    Raises:
        NotFound: no such entitlement for this tenant.
    """
    get_entitlement(session, tenant_id, entitlement_id)
    query = select(Activation).where(Activation.entitlement_id == entitlement_id)
    if not include_closed:
        query = query.where(Activation.deactivated_at.is_(None))
    return list(session.scalars(query.order_by(Activation.activated_at, Activation.id)))
