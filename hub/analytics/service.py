"""Analytics queries: read-only, tenant-scoped, evaluated at a given ``now``.

Every function takes the session, the tenant and ``now`` and returns the
schema objects of :mod:`hub.analytics.schemas`; nothing here writes.

Definitions:

- **time to activate**: for each (product, device) pair, the device's first
  activation of any entitlement of the product (``activated_at <= now``)
  minus the device's registration (``Device.created_at``), in seconds.
- **covered**: a device is covered by a license model when it has an open
  activation of an entitlement of that model that is in force at ``now``
  (:func:`hub.entitlements.effective.in_force`: active, started, within term
  plus grace, temporary activations not lapsed, floating seats held).
- **unused** (churn risk): an ``active`` entitlement that has started and has
  no open activation (a rehost's lapsed temporary activation is not open);
  a floating one is also unused when no seat of it is held now and none was
  released within the last ``idle_days`` days.
- **leakage**: a feature an *acknowledged*, unexpired manifest enables although
  the device's effective features at ``now`` do not, or grants with a higher
  limit or cap (``None``, no ceiling, is higher than any number).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hub.analytics.schemas import (
    DurationStats,
    FeatureState,
    LeakageReport,
    LeakFinding,
    LeakKind,
    LicenseModelsReport,
    LicenseModelUsage,
    ManifestSummary,
    ProductActivationTimes,
    TimeToActivateReport,
    UnusedEntitlement,
    UnusedReason,
)
from hub.entitlements.effective import Grant, in_force
from hub.entitlements.grants import device_features
from hub.entitlements.models import (
    LICENSE_MODELS,
    STATUSES,
    Activation,
    CustomerAccount,
    Entitlement,
    SeatLease,
)
from hub.manifests.models import DELIVERY_STATES, DeviceManifest
from hub.registry.models import Device, Product
from protocols.cose import decode_sign1
from protocols.manifest import FeatureEntry, FeatureManifest, decode_manifest

PERCENTILE_METHOD = (
    "linear interpolation between closest ranks (Hyndman-Fan type 7, NumPy's default): "
    "rank = q * (n - 1) over the sorted values"
)
SECONDS_PER_DAY = 86_400

# ---------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile of ``values`` by linear interpolation between closest ranks.

    The values are sorted; the quantile sits at fractional rank ``q * (n - 1)``
    and is interpolated between the two values around it (Hyndman and Fan's
    type 7, NumPy's ``method="linear"``, Excel's ``PERCENTILE.INC``). With one
    value every quantile is that value.

    Args:
        values: at least one number, in any order.
        q: the quantile, ``0 <= q <= 1`` (0.5: the median).

    Raises:
        ValueError: no values, or ``q`` outside ``[0, 1]``.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 1.0:
        raise ValueError("q must be within [0, 1]")
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def duration_stats(values: Sequence[float]) -> DurationStats:
    """Count, min, p50, p90, max and mean of ``values`` (all ``None`` when empty)."""
    if not values:
        return DurationStats(count=0)
    return DurationStats(
        count=len(values),
        min=min(values),
        p50=percentile(values, 0.5),
        p90=percentile(values, 0.9),
        max=max(values),
        mean=math.fsum(values) / len(values),
    )


# ---------------------------------------------------------------- time to activate


def _first_activation_delays(
    session: Session, tenant_id: str, now: datetime, since: datetime | None
) -> dict[str, list[float]]:
    """Seconds from registration to first activation, per product."""
    first = (
        select(
            Entitlement.product_id.label("product_id"),
            Activation.device_id.label("device_id"),
            func.min(Activation.activated_at).label("first_at"),
        )
        .join(Entitlement, Entitlement.id == Activation.entitlement_id)
        .where(
            Activation.tenant_id == tenant_id,
            Entitlement.tenant_id == tenant_id,
            Activation.activated_at <= now,
        )
        .group_by(Entitlement.product_id, Activation.device_id)
        .subquery()
    )
    query = select(first.c.product_id, first.c.first_at, Device.created_at).join(
        Device, Device.id == first.c.device_id
    )
    if since is not None:
        query = query.where(first.c.first_at >= since)
    delays: dict[str, list[float]] = defaultdict(list)
    for product_id, first_at, registered_at in session.execute(query):
        delays[product_id].append((first_at - registered_at).total_seconds())
    return delays


def time_to_activate(
    session: Session, tenant_id: str, now: datetime, *, since: datetime | None = None
) -> TimeToActivateReport:
    """Per product, how long devices took from registration to first activation.

    Every product of the tenant is listed (``count`` 0 when no device was
    ever activated on it), ordered by SKU.

    Args:
        session: any session.
        tenant_id: whose fleet.
        now: activations after ``now`` are ignored.
        since: only devices whose first activation of the product is at or
            after this instant.
    """
    delays = _first_activation_delays(session, tenant_id, now, since)
    products = session.scalars(
        select(Product).where(Product.tenant_id == tenant_id).order_by(Product.sku)
    )
    return TimeToActivateReport(
        at=now,
        since=since,
        method=PERCENTILE_METHOD,
        products=[
            ProductActivationTimes(
                product_id=p.id,
                sku=p.sku,
                name=p.name,
                seconds=duration_stats(delays.get(p.id, [])),
            )
            for p in products
        ],
    )


# ---------------------------------------------------------------- license models


def _covered_devices(session: Session, tenant_id: str, now: datetime) -> dict[str, set[str]]:
    """Devices covered at ``now``, per license model."""
    rows = session.execute(
        select(Entitlement, Activation)
        .join(Activation, Activation.entitlement_id == Entitlement.id)
        .where(
            Entitlement.tenant_id == tenant_id,
            Entitlement.status == "active",
            Activation.deactivated_at.is_(None),
        )
    ).all()
    seats = {
        (ent_id, device_id)
        for ent_id, device_id in session.execute(
            select(SeatLease.entitlement_id, SeatLease.device_id).where(
                SeatLease.tenant_id == tenant_id, SeatLease.released_at.is_(None)
            )
        )
    }
    covered: dict[str, set[str]] = defaultdict(set)
    for ent, activation in rows:
        grant = Grant(
            license_model=ent.license_model,
            status=ent.status,
            starts_at=ent.starts_at,
            ends_at=ent.ends_at,
            grace_seconds=ent.grace_seconds,
            temporary_until=activation.temporary_until,
            seat_held=(ent.id, activation.device_id) in seats,
        )
        if in_force(grant, now):
            covered[ent.license_model].add(activation.device_id)
    return covered


def license_models(session: Session, tenant_id: str, now: datetime) -> LicenseModelsReport:
    """Entitlements by license model and status, and the devices each model covers now.

    Every license model is listed, in :data:`LICENSE_MODELS` order, with a
    count for every status (zeros included).
    """
    counts = session.execute(
        select(Entitlement.license_model, Entitlement.status, func.count())
        .where(Entitlement.tenant_id == tenant_id)
        .group_by(Entitlement.license_model, Entitlement.status)
    )
    by_model: dict[str, dict[str, int]] = {m: dict.fromkeys(STATUSES, 0) for m in LICENSE_MODELS}
    for model, status, count in counts:
        by_model[model][status] = count
    covered = _covered_devices(session, tenant_id, now)
    models = [
        LicenseModelUsage(
            license_model=model,
            total=sum(statuses.values()),
            by_status=statuses,
            devices_covered=len(covered.get(model, ())),
        )
        for model, statuses in by_model.items()
    ]
    everyone = set().union(*covered.values()) if covered else set()
    return LicenseModelsReport(at=now, models=models, devices_covered=len(everyone))


# ---------------------------------------------------------------- unused entitlements


@dataclass
class _Usage:
    """What is known about one entitlement's use."""

    open_activation: bool = False
    seat_held: bool = False
    last_closed: datetime | None = None
    last_seat_release: datetime | None = None


def _latest(*values: datetime | None) -> datetime | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _usage(session: Session, tenant_id: str, now: datetime) -> dict[str, _Usage]:
    """Activation and seat use of the tenant's active entitlements."""
    active = (Entitlement.tenant_id == tenant_id, Entitlement.status == "active")
    usage: dict[str, _Usage] = defaultdict(_Usage)
    for ent_id, closed_at, temporary_until in session.execute(
        select(Activation.entitlement_id, Activation.deactivated_at, Activation.temporary_until)
        .join(Entitlement, Entitlement.id == Activation.entitlement_id)
        .where(*active)
    ):
        lapsed = temporary_until if temporary_until and temporary_until <= now else None
        end = closed_at or lapsed
        u = usage[ent_id]
        if end is None:
            u.open_activation = True
        u.last_closed = _latest(u.last_closed, end)
    for ent_id, released_at in session.execute(
        select(SeatLease.entitlement_id, SeatLease.released_at)
        .join(Entitlement, Entitlement.id == SeatLease.entitlement_id)
        .where(*active)
    ):
        u = usage[ent_id]
        u.seat_held = u.seat_held or released_at is None
        u.last_seat_release = _latest(u.last_seat_release, released_at)
    return usage


def _unused(
    ent: Entitlement, u: _Usage, now: datetime, idle_days: int
) -> tuple[datetime, UnusedReason] | None:
    """Since when and why ``ent`` is unused, or ``None`` when it is in use."""
    if not u.open_activation:
        since = _latest(ent.starts_at, u.last_closed, u.last_seat_release)
        assert since is not None
        return since, "no_activation"
    if ent.license_model != "floating" or u.seat_held:
        return None
    since = _latest(ent.starts_at, u.last_seat_release)
    assert since is not None
    if (now - since).total_seconds() < idle_days * SECONDS_PER_DAY:
        return None
    return since, "no_seat"


def unused_entitlements(
    session: Session,
    tenant_id: str,
    now: datetime,
    *,
    idle_days: int = 30,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[UnusedEntitlement], int]:
    """A page of active entitlements nobody uses, longest unused first.

    ``unused_since`` is the latest of the entitlement's start, the end of its
    last activation (deactivation or lapse of a temporary one) and its last seat
    release; ``days_unused`` is whole days from then to ``now``.

    Args:
        session: any session.
        tenant_id: whose entitlements.
        now: the instant of the report.
        idle_days: how long a floating entitlement with open activations must
            have had no seat held before it counts as unused.
        limit: page size.
        offset: items to skip.

    Returns:
        The page and the total number of unused entitlements.
    """
    usage = _usage(session, tenant_id, now)
    rows = session.execute(
        select(Entitlement, CustomerAccount.name, Product.sku)
        .join(CustomerAccount, CustomerAccount.id == Entitlement.account_id)
        .join(Product, Product.id == Entitlement.product_id)
        .where(
            Entitlement.tenant_id == tenant_id,
            Entitlement.status == "active",
            Entitlement.starts_at <= now,
        )
    ).all()
    found = []
    for ent, account_name, sku in rows:
        verdict = _unused(ent, usage.get(ent.id, _Usage()), now, idle_days)
        if verdict is not None:
            since, reason = verdict
            found.append(_unused_item(ent, account_name, sku, now=now, since=since, reason=reason))
    found.sort(key=lambda i: (-i.days_unused, i.unused_since, i.created_at, i.entitlement_id))
    return found[offset : offset + limit], len(found)


def _unused_item(
    ent: Entitlement,
    account_name: str,
    sku: str,
    *,
    now: datetime,
    since: datetime,
    reason: UnusedReason,
) -> UnusedEntitlement:
    return UnusedEntitlement(
        entitlement_id=ent.id,
        account_id=ent.account_id,
        account_name=account_name,
        product_id=ent.product_id,
        sku=sku,
        license_model=ent.license_model,
        quantity=ent.quantity,
        created_at=ent.created_at,
        unused_since=since,
        days_unused=max(0, int((now - since).total_seconds() // SECONDS_PER_DAY)),
        reason=reason,
    )


# ---------------------------------------------------------------- leakage


def _exceeds(held: int | None, entitled: int | None) -> bool:
    """Whether a held ceiling is above the entitled one (``None``: no ceiling)."""
    if entitled is None:
        return False
    return held is None or held > entitled


def leak_kind(held: FeatureEntry, entitled: FeatureEntry | None) -> LeakKind | None:
    """How a held feature goes beyond its entitlement, or ``None`` when it does not.

    Args:
        held: the feature as the device's manifest states it.
        entitled: the device's current effective entry (``None``: unknown feature).
    """
    if not held.enabled:
        return None
    if entitled is None or not entitled.enabled:
        return "not_entitled"
    if _exceeds(held.limit, entitled.limit):
        return "limit"
    if _exceeds(held.cap, entitled.cap):
        return "cap"
    return None


def _state(entry: FeatureEntry | None) -> FeatureState:
    if entry is None:
        return FeatureState(enabled=False)
    return FeatureState(enabled=entry.enabled, limit=entry.limit, cap=entry.cap)


def _acknowledged_manifest(row: DeviceManifest) -> FeatureManifest | None:
    if row.acknowledged_signed is None:
        return None
    return decode_manifest(decode_sign1(row.acknowledged_signed).payload or b"")


def _device_leaks(
    session: Session,
    row: DeviceManifest,
    held_manifest: FeatureManifest,
    serial: str,
    now: datetime,
) -> list[LeakFinding]:
    """What the device's acknowledged manifest grants beyond its rights at ``now``."""
    held = held_manifest.features
    entitled = device_features(session, row.device_id, now)
    findings = []
    for key in sorted(held):
        kind = leak_kind(held[key], entitled.get(key))
        if kind is None:
            continue
        findings.append(
            LeakFinding(
                device_id=row.device_id,
                serial=serial,
                feature=key,
                kind=kind,
                held=_state(held[key]),
                entitled=_state(entitled.get(key)),
                manifest_seq=held_manifest.seq,
                issued_at=datetime.fromtimestamp(held_manifest.issued_at, UTC),
                acknowledged_at=row.acknowledged_at,
                not_after=datetime.fromtimestamp(held_manifest.not_after, UTC),
            )
        )
    return findings


def leakage(session: Session, tenant_id: str, now: datetime) -> LeakageReport:
    """Devices whose acknowledged manifest grants more than they are entitled to now.

    The hub keeps the manifest each device last acknowledged next to the one it
    issued latest, so a device still running an older manifest (its re-issue not
    yet acknowledged) is checked against its current rights too. Deliveries not
    yet acknowledged are counted by state in ``manifests.unacknowledged``.
    """
    rows = session.execute(
        select(DeviceManifest, Device.serial)
        .join(Device, Device.id == DeviceManifest.device_id)
        .where(DeviceManifest.tenant_id == tenant_id)
        .order_by(DeviceManifest.device_id)
    ).all()
    states: Counter[str] = Counter()
    findings: list[LeakFinding] = []
    for row, serial in rows:
        if row.delivery_state != "acknowledged":
            states[row.delivery_state] += 1
        held = _acknowledged_manifest(row)
        if held is None:
            continue
        if held.not_after <= int(now.timestamp()):
            states["expired"] += 1
        else:
            states["current"] += 1
            findings.extend(_device_leaks(session, row, held, serial, now))
    summary = ManifestSummary(
        acknowledged_current=states["current"],
        acknowledged_expired=states["expired"],
        unacknowledged={s: states[s] for s in DELIVERY_STATES if s != "acknowledged"},
    )
    devices = len({f.device_id for f in findings})
    return LeakageReport(at=now, devices=devices, findings=findings, manifests=summary)
