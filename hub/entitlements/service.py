"""Entitlement business rules: accounts, features, entitlements and their lifecycle.

Every function takes the session, the caller's ``tenant_id``, an ``actor``
and ``now``; filters every query by tenant (another tenant's object behaves
like a missing one: :class:`~hub.errors.NotFound`); raises
:class:`~hub.errors.HubError` subclasses *before* changing anything; writes
a history entry and an audit event in the same transaction; and never
commits. Functions that change what a device may use return an
:class:`Outcome` whose ``device_ids`` are the devices to re-issue manifests
for. Activations, rehosting and seats live in :mod:`.activations` and
:mod:`.seats`; the effective-feature rules in :mod:`.effective`.

Lifecycle (status)::

    active ──suspend──▶ suspended ──resume──▶ active
    active|suspended ──(ends_at + grace passed; expire job)──▶ expired
    active|suspended|expired ──renew──▶ same status (expired ─▶ active)
    anything but revoked ──revoke──▶ revoked (terminal)

Status changes never close activations: an expired subscription that is
renewed comes back on the same devices, and a revoked one keeps listing its
features on its devices as disabled. Seats of a floating entitlement are
released when it is suspended, revoked or expired.

Overlapping terms: an account may not hold two subscriptions of the same
product whose terms overlap (renew it, or change its quantity, instead);
other models may stack (a trial per device, several perpetual licenses),
and their grants combine (see :mod:`.effective`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session

from hub.audit.service import record
from hub.entitlements import history
from hub.entitlements.models import (
    Activation,
    CustomerAccount,
    Entitlement,
    Feature,
    SeatLease,
)
from hub.entitlements.schemas import (
    AccountCreate,
    AccountUpdate,
    EntitlementCreate,
    EntitlementUpdate,
    FeatureCreate,
    FeatureOverride,
    FeatureUpdate,
    RenewBody,
    check_term,
)
from hub.errors import Conflict, NotFound, ValidationFailed
from hub.registry.service import add_unique, get_product

T = TypeVar("T")

DEVICE_CHANGING_STATUSES = ("active", "suspended")


# ---------------------------------------------------------------- errors


class UnknownFeature(ValidationFailed):
    """An override names a feature the product does not have."""

    code = "unknown_feature"


class InvalidOverride(ValidationFailed):
    """An override sets a field that does not fit the feature's kind."""

    code = "invalid_override"


class InvalidFeature(ValidationFailed):
    """A feature change does not fit the feature's kind."""

    code = "invalid_feature"


class InvalidTerm(ValidationFailed):
    """Inverted, missing, forbidden or too long a term, or a renewal that shortens."""

    code = "invalid_term"


class InvalidQuantity(ValidationFailed):
    """A quantity that the license model does not allow."""

    code = "invalid_quantity"


class OverlappingTerm(Conflict):
    """The account already holds an entitlement of this model whose term overlaps."""

    code = "overlapping_term"


class InvalidTransition(Conflict):
    """The entitlement's status does not allow the action."""

    code = "invalid_state"


class QuantityInUse(Conflict):
    """A new quantity below the devices (or seats) in use."""

    code = "quantity_in_use"


class DuplicateName(Conflict):
    """The name or key is taken."""

    code = "duplicate"


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T]):
    """A service result and the devices whose rights (and manifests) changed."""

    value: T
    device_ids: frozenset[str] = frozenset()


# ---------------------------------------------------------------- helpers


def page(session: Session, query: Select[Any], limit: int, offset: int) -> tuple[list[Any], int]:
    """One page of ``query`` and the total count."""
    total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    return list(session.scalars(query.limit(limit).offset(offset))), total or 0


def term_end(entitlement: Entitlement) -> datetime | None:
    """The first instant the entitlement is out of term (``ends_at`` + grace)."""
    if entitlement.ends_at is None:
        return None
    return entitlement.ends_at + timedelta(seconds=entitlement.grace_seconds)


def get_entitlement(
    session: Session, tenant_id: str, entitlement_id: str, *, lock: bool = False
) -> Entitlement:
    """The tenant's entitlement, optionally locked (``FOR UPDATE``) for a change.

    Raises:
        NotFound: no such entitlement for this tenant.
    """
    query = select(Entitlement).where(
        Entitlement.id == entitlement_id, Entitlement.tenant_id == tenant_id
    )
    if lock:
        query = query.with_for_update().execution_options(populate_existing=True)
    entitlement = session.scalar(query)
    if entitlement is None:
        raise NotFound(f"entitlement {entitlement_id} not found")
    return entitlement


def open_device_ids(session: Session, entitlement_ids: Iterable[str]) -> frozenset[str]:
    """Devices with an open activation of any of ``entitlement_ids``."""
    ids = list(entitlement_ids)
    if not ids:
        return frozenset()
    rows = session.scalars(
        select(Activation.device_id).where(
            Activation.entitlement_id.in_(ids), Activation.deactivated_at.is_(None)
        )
    )
    return frozenset(rows)


def release_seats(
    session: Session, entitlement: Entitlement, now: datetime, reason: str
) -> frozenset[str]:
    """Release every open seat of ``entitlement``; returns the devices that held one."""
    seats = list(
        session.scalars(
            select(SeatLease).where(
                SeatLease.entitlement_id == entitlement.id, SeatLease.released_at.is_(None)
            )
        )
    )
    for seat in seats:
        seat.released_at = now
        seat.release_reason = reason
    return frozenset(seat.device_id for seat in seats)


# ---------------------------------------------------------------- accounts


def create_account(
    session: Session, *, tenant_id: str, actor: str, now: datetime, data: AccountCreate
) -> CustomerAccount:
    """Create a customer account.

    Raises:
        DuplicateName: the tenant has an account of that name.
    """
    account = CustomerAccount(
        id=str(uuid.uuid4()),
        tenant_id=tenant_id,
        name=data.name,
        external_ref=data.external_ref,
        created_at=now,
    )
    _add_unique(session, account, f"an account named {data.name!r} already exists")
    _audit(
        session,
        tenant_id=tenant_id,
        actor=actor,
        now=now,
        action="account.create",
        target_type="account",
        target_id=account.id,
        detail=data.name,
    )
    return account


def get_account(session: Session, tenant_id: str, account_id: str) -> CustomerAccount:
    """The tenant's account ``account_id``.

    Raises:
        NotFound: no such account for this tenant.
    """
    account = session.get(CustomerAccount, account_id)
    if account is None or account.tenant_id != tenant_id:
        raise NotFound(f"account {account_id} not found")
    return account


def list_accounts(
    session: Session, tenant_id: str, *, limit: int, offset: int
) -> tuple[list[CustomerAccount], int]:
    """A page of the tenant's accounts ordered by name."""
    query = select(CustomerAccount).where(CustomerAccount.tenant_id == tenant_id)
    return page(session, query.order_by(CustomerAccount.name, CustomerAccount.id), limit, offset)


def update_account(
    session: Session,
    *,
    tenant_id: str,
    actor: str,
    now: datetime,
    account_id: str,
    data: AccountUpdate,
) -> CustomerAccount:
    """Rename an account or change its external reference.

    Raises:
        NotFound: no such account for this tenant.
        DuplicateName: the new name is taken.
    """
    account = get_account(session, tenant_id, account_id)
    changes = data.model_dump(exclude_unset=True)
    if "name" in changes and changes["name"] != account.name:
        taken = select(CustomerAccount.id).where(
            CustomerAccount.tenant_id == tenant_id, CustomerAccount.name == changes["name"]
        )
        if session.scalar(taken) is not None:
            raise DuplicateName(f"an account named {changes['name']!r} already exists")
    for name, value in changes.items():
        if name != "name" or value is not None:
            setattr(account, name, value)
    _audit(
        session,
        tenant_id=tenant_id,
        actor=actor,
        now=now,
        action="account.update",
        target_type="account",
        target_id=account_id,
        detail=changes,
    )
    return account


def _add_unique(session: Session, obj: object, message: str) -> None:
    try:
        add_unique(session, obj, message)
    except Conflict as exc:
        raise DuplicateName(str(exc)) from exc


def _audit(
    session: Session,
    *,
    tenant_id: str,
    actor: str,
    now: datetime,
    action: str,
    target_type: str,
    target_id: str,
    detail: Any,
) -> None:
    record(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action=action,
        target_type=target_type,
        target_id=target_id,
        now=now,
        detail={"change": detail} if not isinstance(detail, dict) else detail,
    )


# ---------------------------------------------------------------- features


def create_feature(
    session: Session,
    *,
    tenant_id: str,
    actor: str,
    now: datetime,
    product_id: str,
    data: FeatureCreate,
) -> Feature:
    """Add a feature to a product (keys unique per product).

    Raises:
        NotFound: no such product for this tenant.
        DuplicateName: the product has a feature with that key.
    """
    get_product(session, tenant_id, product_id)
    feature = Feature(
        id=str(uuid.uuid4()),
        tenant_id=tenant_id,
        product_id=product_id,
        created_at=now,
        **data.model_dump(),
    )
    _add_unique(session, feature, f"the product already has a feature {data.key!r}")
    _audit(
        session,
        tenant_id=tenant_id,
        actor=actor,
        now=now,
        action="feature.create",
        target_type="feature",
        target_id=feature.id,
        detail=data.model_dump(),
    )
    return feature


def get_feature(session: Session, tenant_id: str, product_id: str, feature_id: str) -> Feature:
    """The product's feature ``feature_id`` (matched by id or by key).

    Raises:
        NotFound: no such product or feature for this tenant.
    """
    get_product(session, tenant_id, product_id)
    feature = session.scalar(
        select(Feature).where(
            Feature.product_id == product_id,
            Feature.tenant_id == tenant_id,
            or_(Feature.id == feature_id, Feature.key == feature_id),
        )
    )
    if feature is None:
        raise NotFound(f"feature {feature_id} not found")
    return feature


def list_features(
    session: Session, tenant_id: str, product_id: str, *, limit: int, offset: int
) -> tuple[list[Feature], int]:
    """A page of a product's features ordered by key.

    Raises:
        NotFound: no such product for this tenant.
    """
    get_product(session, tenant_id, product_id)
    query = select(Feature).where(Feature.tenant_id == tenant_id, Feature.product_id == product_id)
    return page(session, query.order_by(Feature.key), limit, offset)


_KIND_FIELDS = {
    "flag": frozenset(),
    "limit": frozenset({"default_limit"}),
    "metered": frozenset({"cap_per_period", "period", "overage"}),
}


def update_feature(
    session: Session,
    *,
    tenant_id: str,
    actor: str,
    now: datetime,
    product_id: str,
    feature_id: str,
    data: FeatureUpdate,
) -> Outcome[Feature]:
    """Change a feature's default limit, cap, period or overage policy.

    Returns:
        The feature and every device with an open activation of the product.

    Raises:
        NotFound: no such product or feature for this tenant.
        InvalidFeature: a field that does not belong to the feature's kind.
    """
    feature = get_feature(session, tenant_id, product_id, feature_id)
    changes = {k: v for k, v in data.model_dump(exclude_unset=True).items() if v is not None}
    foreign = set(changes) - _KIND_FIELDS[feature.kind]
    if foreign:
        raise InvalidFeature(f"{', '.join(sorted(foreign))} do not apply to a {feature.kind}")
    for name, value in changes.items():
        setattr(feature, name, value)
    _audit(
        session,
        tenant_id=tenant_id,
        actor=actor,
        now=now,
        action="feature.update",
        target_type="feature",
        target_id=feature.id,
        detail=changes,
    )
    return Outcome(feature, _product_device_ids(session, tenant_id, product_id))


def _product_device_ids(session: Session, tenant_id: str, product_id: str) -> frozenset[str]:
    ids = session.scalars(
        select(Entitlement.id).where(
            Entitlement.tenant_id == tenant_id, Entitlement.product_id == product_id
        )
    )
    return open_device_ids(session, ids)


def validate_overrides(
    session: Session, product_id: str, overrides: Mapping[str, FeatureOverride]
) -> dict[str, dict[str, Any]]:
    """Check overrides against the product's features; return them as stored JSON.

    Raises:
        UnknownFeature: a key the product has no feature for.
        InvalidOverride: ``limit`` on a non-limit feature, ``cap`` on a non-metered one.
    """
    rows = session.execute(
        select(Feature.key, Feature.kind).where(Feature.product_id == product_id)
    )
    kinds = {key: kind for key, kind in rows}
    unknown = sorted(set(overrides) - set(kinds))
    if unknown:
        raise UnknownFeature(f"unknown feature(s) for this product: {', '.join(unknown)}")
    stored: dict[str, dict[str, Any]] = {}
    for key, override in sorted(overrides.items()):
        values = override.model_dump(exclude_none=True)
        if "limit" in values and kinds[key] != "limit":
            raise InvalidOverride(f"{key}: limit applies to limit features only")
        if "cap" in values and kinds[key] != "metered":
            raise InvalidOverride(f"{key}: cap applies to metered features only")
        stored[key] = values
    return stored


# ---------------------------------------------------------------- entitlements


def _check_term(model: str, starts_at: datetime, ends_at: datetime | None) -> None:
    try:
        check_term(model, starts_at, ends_at)
    except ValueError as exc:
        raise InvalidTerm(str(exc)) from exc


def _check_overlap(
    session: Session,
    ent: Entitlement,
    starts_at: datetime,
    ends_at: datetime | None,
) -> None:
    """Refuse a second subscription of one product for one account over one time."""
    if ent.license_model != "subscription":
        return
    query = select(Entitlement).where(
        Entitlement.tenant_id == ent.tenant_id,
        Entitlement.account_id == ent.account_id,
        Entitlement.product_id == ent.product_id,
        Entitlement.license_model == ent.license_model,
        Entitlement.status.in_(DEVICE_CHANGING_STATUSES),
        Entitlement.id != ent.id,
    )
    for other in session.scalars(query):
        other_end = other.ends_at
        if other.starts_at < (ends_at or datetime.max.replace(tzinfo=starts_at.tzinfo)) and (
            other_end is None or starts_at < other_end
        ):
            raise OverlappingTerm(
                f"account already holds {ent.license_model} entitlement {other.id} "
                "for this product over an overlapping term; renew it instead"
            )


def create_entitlement(
    session: Session, *, tenant_id: str, actor: str, now: datetime, data: EntitlementCreate
) -> Outcome[Entitlement]:
    """Grant a product to an account (no devices yet: activate it next).

    Raises:
        NotFound: no such account or product for this tenant.
        InvalidQuantity: node-locked or trial with a quantity other than 1.
        InvalidTerm: inverted term, missing or forbidden end, trial over 30 days.
        UnknownFeature, InvalidOverride: overrides that do not fit the product.
        OverlappingTerm: a subscription of the product overlapping this one.
    """
    get_account(session, tenant_id, data.account_id)
    get_product(session, tenant_id, data.product_id)
    if data.license_model in ("node_locked", "trial") and data.quantity != 1:
        raise InvalidQuantity(f"a {data.license_model} entitlement has quantity 1")
    starts_at = data.starts_at or now
    _check_term(data.license_model, starts_at, data.ends_at)
    overrides = validate_overrides(session, data.product_id, data.feature_overrides)
    ent = Entitlement(
        id=str(uuid.uuid4()),
        tenant_id=tenant_id,
        account_id=data.account_id,
        product_id=data.product_id,
        license_model=data.license_model,
        quantity=data.quantity,
        starts_at=starts_at,
        ends_at=data.ends_at,
        grace_seconds=data.grace_seconds,
        status="active",
        feature_overrides=overrides,
        created_at=now,
        updated_at=now,
    )
    _check_overlap(session, ent, starts_at, data.ends_at)
    session.add(ent)
    session.flush()
    history.log(
        session,
        ent,
        actor=actor,
        action="entitlement.create",
        now=now,
        reason=data.reason,
        detail=_snapshot(ent),
    )
    return Outcome(ent)


def _snapshot(ent: Entitlement) -> dict[str, Any]:
    return {
        "product_id": ent.product_id,
        "license_model": ent.license_model,
        "quantity": ent.quantity,
        "starts_at": ent.starts_at.isoformat(),
        "ends_at": ent.ends_at.isoformat() if ent.ends_at else None,
        "grace_seconds": ent.grace_seconds,
        "feature_overrides": ent.feature_overrides,
    }


@dataclass(frozen=True, slots=True)
class EntitlementFilter:
    """Optional filters of an entitlement listing; ``None`` means no filter."""

    account_id: str | None = None
    product_id: str | None = None
    status: str | None = None
    license_model: str | None = None


def list_entitlements(
    session: Session, tenant_id: str, flt: EntitlementFilter, *, limit: int, offset: int
) -> tuple[list[Entitlement], int]:
    """A page of the tenant's entitlements matching ``flt``, oldest first."""
    query = select(Entitlement).where(Entitlement.tenant_id == tenant_id)
    for column, value in (
        (Entitlement.account_id, flt.account_id),
        (Entitlement.product_id, flt.product_id),
        (Entitlement.status, flt.status),
        (Entitlement.license_model, flt.license_model),
    ):
        if value is not None:
            query = query.where(column == value)
    return page(session, query.order_by(Entitlement.created_at, Entitlement.id), limit, offset)


def update_entitlement(
    session: Session,
    *,
    tenant_id: str,
    actor: str,
    now: datetime,
    entitlement_id: str,
    data: EntitlementUpdate,
) -> Outcome[Entitlement]:
    """Replace feature overrides, change the grace period and/or the quantity.

    Raises:
        NotFound: no such entitlement for this tenant.
        UnknownFeature, InvalidOverride: overrides that do not fit the product.
        InvalidQuantity: a quantity other than 1 for node-locked or trial.
        QuantityInUse: fewer than the devices (floating: seats) in use.
        InvalidTransition: the entitlement is revoked.
    """
    ent = get_entitlement(session, tenant_id, entitlement_id, lock=True)
    _require(ent, ("active", "suspended", "expired"), "change")
    detail: dict[str, Any] = {}
    if data.feature_overrides is not None:
        overrides = validate_overrides(session, ent.product_id, data.feature_overrides)
        detail["feature_overrides"] = {"from": ent.feature_overrides, "to": overrides}
        ent.feature_overrides = overrides
    if data.grace_seconds is not None:
        detail["grace_seconds"] = {"from": ent.grace_seconds, "to": data.grace_seconds}
        ent.grace_seconds = data.grace_seconds
    if data.quantity is not None and data.quantity != ent.quantity:
        _check_quantity(session, ent, data.quantity)
        detail["quantity"] = {"from": ent.quantity, "to": data.quantity}
        ent.quantity = data.quantity
    if not detail:
        return Outcome(ent)
    ent.updated_at = now
    history.log(
        session,
        ent,
        actor=actor,
        action="entitlement.update",
        now=now,
        reason=data.reason,
        detail=detail,
    )
    return Outcome(ent, open_device_ids(session, [ent.id]))


def _check_quantity(session: Session, ent: Entitlement, quantity: int) -> None:
    if ent.license_model in ("node_locked", "trial"):
        raise InvalidQuantity(f"a {ent.license_model} entitlement has quantity 1")
    model, column = (
        (SeatLease, SeatLease.released_at)
        if ent.license_model == "floating"
        else (Activation, Activation.deactivated_at)
    )
    used = session.scalar(
        select(func.count())
        .select_from(model)
        .where(model.entitlement_id == ent.id, column.is_(None))
    )
    if (used or 0) > quantity:
        raise QuantityInUse(f"{used} in use; release some before lowering the quantity")


def _require(ent: Entitlement, statuses: tuple[str, ...], what: str) -> None:
    if ent.status not in statuses:
        raise InvalidTransition(f"cannot {what} a {ent.status} entitlement")


def _transition(
    session: Session,
    ent: Entitlement,
    *,
    actor: str,
    now: datetime,
    status: str,
    action: str,
    reason: str,
    detail: dict[str, Any] | None = None,
) -> Outcome[Entitlement]:
    """Set the status, free seats when rights end, log; devices of the entitlement."""
    previous = ent.status
    ent.status = status
    ent.updated_at = now
    seat_holders = release_seats(session, ent, now, action) if status != "active" else frozenset()
    full = {"from": previous, "to": status, **(detail or {})}
    if seat_holders:
        full["seats_released"] = sorted(seat_holders)
    history.log(session, ent, actor=actor, action=action, now=now, reason=reason, detail=full)
    return Outcome(ent, open_device_ids(session, [ent.id]) | seat_holders)


def suspend(
    session: Session,
    *,
    tenant_id: str,
    actor: str,
    now: datetime,
    entitlement_id: str,
    reason: str = "",
) -> Outcome[Entitlement]:
    """Suspend an active entitlement (its grants stop counting at once).

    Raises:
        NotFound: no such entitlement for this tenant.
        InvalidTransition: it is not active.
    """
    ent = get_entitlement(session, tenant_id, entitlement_id, lock=True)
    _require(ent, ("active",), "suspend")
    return _transition(
        session,
        ent,
        actor=actor,
        now=now,
        status="suspended",
        action="entitlement.suspend",
        reason=reason,
    )


def resume(
    session: Session,
    *,
    tenant_id: str,
    actor: str,
    now: datetime,
    entitlement_id: str,
    reason: str = "",
) -> Outcome[Entitlement]:
    """Resume a suspended entitlement.

    Raises:
        NotFound: no such entitlement for this tenant.
        InvalidTransition: it is not suspended.
    """
    ent = get_entitlement(session, tenant_id, entitlement_id, lock=True)
    _require(ent, ("suspended",), "resume")
    return _transition(
        session,
        ent,
        actor=actor,
        now=now,
        status="active",
        action="entitlement.resume",
        reason=reason,
    )


def revoke(
    session: Session,
    *,
    tenant_id: str,
    actor: str,
    now: datetime,
    entitlement_id: str,
    reason: str = "",
) -> Outcome[Entitlement]:
    """Revoke an entitlement for good (terminal).

    Raises:
        NotFound: no such entitlement for this tenant.
        InvalidTransition: it is already revoked.
    """
    ent = get_entitlement(session, tenant_id, entitlement_id, lock=True)
    _require(ent, ("active", "suspended", "expired"), "revoke")
    return _transition(
        session,
        ent,
        actor=actor,
        now=now,
        status="revoked",
        action="entitlement.revoke",
        reason=reason,
    )


def _renewed_end(ent: Entitlement, body: RenewBody) -> datetime:
    if ent.ends_at is None:
        raise InvalidTerm(f"this {ent.license_model} entitlement has no term to renew")
    if body.ends_at is not None:
        return body.ends_at
    seconds = body.term_seconds or (ent.ends_at - ent.starts_at).total_seconds()
    return ent.ends_at + timedelta(seconds=seconds)


def renew(
    session: Session,
    *,
    tenant_id: str,
    actor: str,
    now: datetime,
    entitlement_id: str,
    body: RenewBody,
) -> Outcome[Entitlement]:
    """Extend the term: to ``body.ends_at``, by ``body.term_seconds``, or by one term.

    An expired entitlement whose new end (with grace) is in the future becomes
    active again; a suspended one stays suspended.

    Raises:
        NotFound: no such entitlement for this tenant.
        InvalidTransition: it is revoked.
        InvalidTerm: no term (perpetual, open-ended), a new end not after the
            current one, a trial past 30 days, or an expired one still over.
        OverlappingTerm: the longer term overlaps another subscription.
    """
    ent = get_entitlement(session, tenant_id, entitlement_id, lock=True)
    _require(ent, ("active", "suspended", "expired"), "renew")
    new_end = _renewed_end(ent, body)
    old_end = ent.ends_at
    if old_end is None or new_end <= old_end:
        raise InvalidTerm("a renewal must move ends_at later")
    _check_term(ent.license_model, ent.starts_at, new_end)
    revived = ent.status == "expired"
    if revived and new_end + timedelta(seconds=ent.grace_seconds) <= now:
        raise InvalidTerm("the renewed term would already be over")
    _check_overlap(session, ent, ent.starts_at, new_end)
    ent.ends_at = new_end
    detail = {"ends_at": {"from": old_end.isoformat(), "to": new_end.isoformat()}}
    return _transition(
        session,
        ent,
        actor=actor,
        now=now,
        status="active" if revived else ent.status,
        action="entitlement.renew",
        reason=body.reason,
        detail=detail,
    )


def expire_due(session: Session, *, now: datetime, actor: str = "system") -> frozenset[str]:
    """The expiry job: expire entitlements past ``ends_at`` + grace; lapse rehost licenses.

    Active and suspended entitlements whose ``ends_at + grace <= now`` become
    ``expired``; open temporary activations with ``temporary_until <= now``
    are closed. Idempotent; safe to run from several workers.

    Returns:
        The devices whose rights changed.
    """
    due = session.scalars(
        select(Entitlement)
        .where(
            Entitlement.status.in_(DEVICE_CHANGING_STATUSES),
            Entitlement.ends_at.is_not(None),
            Entitlement.ends_at <= now,
        )
        .order_by(Entitlement.id)
        .with_for_update()
    )
    affected: set[str] = set()
    for ent in list(due):
        end = term_end(ent)
        if end is not None and end <= now:
            outcome = _transition(
                session,
                ent,
                actor=actor,
                now=now,
                status="expired",
                action="entitlement.expire",
                reason="term ended",
            )
            affected |= outcome.device_ids
    return frozenset(affected | lapse_temporary_activations(session, now=now, actor=actor))


def lapse_temporary_activations(
    session: Session, *, now: datetime, actor: str = "system"
) -> frozenset[str]:
    """Close open temporary (rehost) activations whose ``temporary_until`` has passed."""
    lapsed = list(
        session.scalars(
            select(Activation)
            .where(
                Activation.deactivated_at.is_(None),
                Activation.temporary_until.is_not(None),
                Activation.temporary_until <= now,
            )
            .with_for_update()
        )
    )
    for activation in lapsed:
        close_lapsed(session, activation, actor=actor, now=now)
    return frozenset(a.device_id for a in lapsed)


def close_lapsed(session: Session, activation: Activation, *, actor: str, now: datetime) -> None:
    """Close a temporary activation that has lapsed, as of its ``temporary_until``."""
    ent = session.get_one(Entitlement, activation.entitlement_id)
    activation.deactivated_at = activation.temporary_until
    history.log(
        session,
        ent,
        actor=actor,
        action="activation.lapse",
        now=now,
        device_id=activation.device_id,
        reason="temporary rehost license not confirmed",
        detail={"temporary_until": _iso(activation.temporary_until)},
    )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
