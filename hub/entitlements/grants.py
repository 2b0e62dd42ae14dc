"""Snapshots of devices' grants from the database, for :mod:`.effective`.

:func:`load_grants_for_devices` reads the grants of many devices at once (a
few ``IN (...)`` queries per chunk of ids) and :class:`RightsMemo` turns each
snapshot into the effective features *and* the lease, computing them once per
distinct set of grants; manifest issuance uses both. :func:`device_features`
and :func:`device_lease` are the single-device forms. The catalogue is every
feature of every product the device has ever had an activation of (open or
closed, whatever the entitlement's status), so a feature the device lost is
reported as disabled rather than left out. Feature keys are expected to be
distinct across the products a device uses; on a clash the definition of the
product whose id sorts first wins.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.entitlements.effective import (
    FeatureDef,
    Grant,
    effective_features,
    in_force,
    lease_not_after,
)
from hub.entitlements.models import Activation, Entitlement, Feature, SeatLease
from hub.entitlements.schemas import DeviceEntitlements, DeviceGrantPublic, FeatureEntryPublic
from hub.registry.service import get_device
from protocols.manifest import FeatureEntry

# SQLite's historical limit on bound variables is 999; stay under it.
IN_CHUNK = 900


def chunks(ids: Sequence[str], size: int | None = None) -> Iterator[Sequence[str]]:
    """``ids`` in slices of at most ``size`` (default :data:`IN_CHUNK`), for ``IN (...)``."""
    size = size or IN_CHUNK
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


@dataclass(frozen=True, slots=True)
class DeviceGrants:
    """Everything the effective-feature rules need about one device.

    Attributes:
        pairs: each open activation's entitlement and its grant snapshot, in
            entitlement creation order.
        catalog: the features to report, by key (may be shared between
            snapshots of one load: do not mutate).
        products: the products the catalogue was built from.
        known_key: :meth:`key`, when the loader computed it already.
    """

    pairs: list[tuple[Entitlement, Grant]]
    catalog: dict[str, FeatureDef]
    products: frozenset[str] = frozenset()
    known_key: Hashable = field(default=None, compare=False, repr=False)

    @property
    def grants(self) -> list[Grant]:
        """The grant snapshots alone."""
        return [grant for _, grant in self.pairs]

    def key(self) -> Hashable:
        """A hashable key equal for two snapshots the rules cannot tell apart."""
        if self.known_key is not None:
            return self.known_key
        return (self.products, tuple(_grant_key(grant) for grant in self.grants))


def _grant_key(grant: Grant) -> Hashable:
    # Every field the rules read; entitlement_id is bookkeeping only.
    return (
        grant.license_model,
        grant.status,
        grant.starts_at,
        grant.ends_at,
        grant.grace_seconds,
        grant.features,
        _frozen(grant.overrides),
        grant.temporary_until,
        grant.seat_held,
        grant.seat_expires_at,
    )


def _frozen(value: Any) -> Hashable:
    """A hashable, order-independent image of JSON-like data (dicts, lists, scalars)."""
    if isinstance(value, Mapping):
        return ("map", tuple(sorted((str(k), _frozen(v)) for k, v in value.items())))
    if isinstance(value, list | tuple):
        return ("seq", tuple(_frozen(v) for v in value))
    return (type(value).__name__, value)


@dataclass
class _Catalogs:
    """Feature definitions by product, and catalogues by product set (one load)."""

    order: list[str] = field(default_factory=list)  # products in the database's id order
    defs: dict[str, list[FeatureDef]] = field(default_factory=lambda: defaultdict(list))
    keys: dict[str, frozenset[str]] = field(default_factory=dict)
    built: dict[frozenset[str], dict[str, FeatureDef]] = field(default_factory=dict)

    def load(self, session: Session, product_ids: set[str]) -> None:
        """Read the features of ``product_ids`` (a query per chunk)."""
        for chunk in chunks(sorted(product_ids)):
            rows = session.execute(
                select(
                    Feature.product_id,
                    Feature.key,
                    Feature.kind,
                    Feature.default_limit,
                    Feature.cap_per_period,
                    Feature.period,
                    Feature.overage,
                )
                .where(Feature.product_id.in_(chunk))
                .order_by(Feature.product_id, Feature.key)
            )
            for product, key, kind, limit, cap, period, overage in rows:
                if product not in self.defs:
                    self.order.append(product)
                definition = FeatureDef(
                    key=key,
                    kind=kind,  # type: ignore[arg-type]
                    default_limit=limit,
                    cap_per_period=cap,
                    period=period,  # type: ignore[arg-type]
                    overage=overage,  # type: ignore[arg-type]
                )
                self.defs[product].append(definition)
        self.keys = {p: frozenset(d.key for d in defs) for p, defs in self.defs.items()}

    def catalog(self, products: frozenset[str]) -> dict[str, FeatureDef]:
        """The catalogue of a device whose activations ever covered ``products``."""
        if products not in self.built:
            catalog: dict[str, FeatureDef] = {}
            for product in self.order:
                if product in products:
                    for definition in self.defs[product]:
                        catalog.setdefault(definition.key, definition)
            self.built[products] = catalog
        return self.built[products]


@dataclass
class _Rows:
    """The raw rows of one load, by device."""

    open: dict[str, list[tuple[Entitlement, datetime | None]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    seats: dict[tuple[str, str], datetime] = field(default_factory=dict)
    ever: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    entitlements: dict[str, Entitlement] = field(default_factory=dict)

    def load(self, session: Session, chunk: Sequence[str]) -> None:
        """Open activations, held seats and every product ever activated, for ``chunk``.

        The activations are read as plain columns and their entitlements once
        each (a fleet-wide change puts thousands of devices on one entitlement).
        """
        activations = session.execute(
            select(Activation.device_id, Activation.temporary_until, Activation.entitlement_id)
            .join(Entitlement, Activation.entitlement_id == Entitlement.id)
            .where(Activation.device_id.in_(chunk), Activation.deactivated_at.is_(None))
            .order_by(Entitlement.created_at, Entitlement.id)
        ).all()
        self._load_entitlements(session, {entitlement_id for _, _, entitlement_id in activations})
        for device_id, temporary_until, entitlement_id in activations:
            self.open[device_id].append((self.entitlements[entitlement_id], temporary_until))
        for device_id, entitlement_id, heartbeat_at in session.execute(
            select(SeatLease.device_id, SeatLease.entitlement_id, SeatLease.heartbeat_at).where(
                SeatLease.device_id.in_(chunk), SeatLease.released_at.is_(None)
            )
        ):
            self.seats[(device_id, entitlement_id)] = heartbeat_at
        for device_id, product_id in session.execute(
            select(Activation.device_id, Entitlement.product_id)
            .join(Activation, Activation.entitlement_id == Entitlement.id)
            .where(Activation.device_id.in_(chunk))
            .distinct()
        ):
            self.ever[device_id].add(product_id)

    def _load_entitlements(self, session: Session, ids: set[str]) -> None:
        missing = sorted(ids - self.entitlements.keys())
        for part in chunks(missing):
            for ent in session.scalars(select(Entitlement).where(Entitlement.id.in_(part))):
                self.entitlements[ent.id] = ent


def load_grants_for_devices(
    session: Session, device_ids: Sequence[str], *, seat_timeout: timedelta | None = None
) -> dict[str, DeviceGrants]:
    """Snapshot the open activations of many devices with a few queries per chunk.

    Three queries per chunk of :data:`IN_CHUNK` devices (open activations with
    their entitlements, held seats, products ever activated) and one per chunk
    of products (their features), whatever the number of devices.

    Args:
        session: any session.
        device_ids: the devices (unknown ones get an empty snapshot).
        seat_timeout: when given, a held seat's snapshot expires at its last
            heartbeat plus this timeout (used to bound the manifest lease).

    Returns:
        A snapshot for every id of ``device_ids``.
    """
    ids = sorted(set(device_ids))
    rows = _Rows()
    for chunk in chunks(ids):
        rows.load(session, chunk)
    catalogs = _Catalogs()
    catalogs.load(session, set().union(*rows.ever.values()) if rows.ever else set())
    snapshots = _Snapshots(rows, catalogs, seat_timeout)
    return {device_id: snapshots.build(device_id) for device_id in ids}


@dataclass
class _Snapshots:
    """Builds the per-device snapshots of one load.

    Devices on the same entitlement with the same activation and seat state get
    the same :class:`Grant` object (and its key, computed once): a fleet-wide
    change snapshots thousands of devices with one grant between them.
    """

    rows: _Rows
    catalogs: _Catalogs
    seat_timeout: timedelta | None
    grants: dict[Hashable, tuple[Grant, Hashable]] = field(default_factory=dict)

    def build(self, device_id: str) -> DeviceGrants:
        products = frozenset(self.rows.ever.get(device_id, ()))
        pairs: list[tuple[Entitlement, Grant]] = []
        keys: list[Hashable] = []
        for ent, temporary_until in self.rows.open.get(device_id, ()):
            heartbeat = self.rows.seats.get((device_id, ent.id))
            memo = (ent.id, temporary_until, heartbeat)
            found = self.grants.get(memo)
            if found is None:
                grant = _grant(ent, temporary_until, heartbeat, self.catalogs, self.seat_timeout)
                found = self.grants[memo] = (grant, _grant_key(grant))
            pairs.append((ent, found[0]))
            keys.append(found[1])
        catalog = self.catalogs.catalog(products)
        return DeviceGrants(pairs, catalog, products, known_key=(products, tuple(keys)))


def _grant(
    ent: Entitlement,
    temporary_until: datetime | None,
    heartbeat: datetime | None,
    catalogs: _Catalogs,
    seat_timeout: timedelta | None,
) -> Grant:
    seat_end = heartbeat + seat_timeout if heartbeat is not None and seat_timeout else None
    return Grant(
        license_model=ent.license_model,
        status=ent.status,
        starts_at=ent.starts_at,
        ends_at=ent.ends_at,
        grace_seconds=ent.grace_seconds,
        features=catalogs.keys.get(ent.product_id, frozenset()),
        overrides=ent.feature_overrides or {},
        temporary_until=temporary_until,
        seat_held=heartbeat is not None,
        seat_expires_at=seat_end,
        entitlement_id=ent.id,
    )


def load_device_grants(
    session: Session, device_id: str, *, seat_timeout: timedelta | None = None
) -> DeviceGrants:
    """Snapshot every open activation of ``device_id``.

    Args:
        session: any session.
        device_id: the device.
        seat_timeout: when given, a held seat's snapshot expires at its last
            heartbeat plus this timeout (used to bound the manifest lease).
    """
    return load_grants_for_devices(session, [device_id], seat_timeout=seat_timeout)[device_id]


@dataclass(frozen=True, slots=True)
class Rights:
    """What one device may use, and until when, at one instant.

    Attributes:
        features: the effective features (shared between devices with equal
            grants: do not mutate).
        not_after: the lease end (see :func:`lease_not_after`).
        key: equal for devices whose rights are computed from equal inputs.
    """

    features: dict[str, FeatureEntry]
    not_after: datetime
    key: Hashable


class RightsMemo:
    """Features and lease at one instant, computed once per distinct set of grants.

    The rules are pure functions of the grant snapshots, the catalogue, ``now``
    and ``lease_seconds``, so devices with identical grants share one result.
    Use one instance per database snapshot (e.g. per :func:`issue` call).
    """

    def __init__(self, now: datetime, lease_seconds: int) -> None:
        self._now = now
        self._lease_seconds = lease_seconds
        self._memo: dict[Hashable, Rights] = {}

    def __call__(self, loaded: DeviceGrants) -> Rights:
        """The rights of the device snapshotted in ``loaded``."""
        key = loaded.key()
        rights = self._memo.get(key)
        if rights is None:
            grants = loaded.grants
            rights = Rights(
                features=effective_features(grants, loaded.catalog, now=self._now),
                not_after=lease_not_after(grants, self._now, self._lease_seconds),
                key=key,
            )
            self._memo[key] = rights
        return rights


def device_features(session: Session, device_id: str, now: datetime) -> dict[str, FeatureEntry]:
    """The device's effective features at ``now`` (for its manifest)."""
    loaded = load_device_grants(session, device_id)
    return effective_features(loaded.grants, loaded.catalog, now=now)


def device_lease(
    session: Session,
    device_id: str,
    now: datetime,
    lease_seconds: int,
    *,
    seat_timeout: timedelta | None = None,
) -> datetime:
    """The ``not_after`` for a manifest issued to the device at ``now``.

    See :func:`hub.entitlements.effective.lease_not_after`; with
    ``seat_timeout``, a held floating seat also bounds the lease.
    """
    loaded = load_device_grants(session, device_id, seat_timeout=seat_timeout)
    return lease_not_after(loaded.grants, now, lease_seconds)


def describe_device(
    session: Session, tenant_id: str, device_id: str, now: datetime
) -> DeviceEntitlements:
    """The device's grants and effective features, for the REST API.

    Raises:
        NotFound: no such device for this tenant.
    """
    get_device(session, tenant_id, device_id)
    loaded = load_device_grants(session, device_id)
    features = effective_features(loaded.grants, loaded.catalog, now=now)
    return DeviceEntitlements(
        device_id=device_id,
        at=now,
        grants=[_grant_public(ent, grant, now) for ent, grant in loaded.pairs],
        features={
            key: FeatureEntryPublic(
                enabled=e.enabled, limit=e.limit, cap=e.cap, period=e.period, overage=e.overage
            )
            for key, e in features.items()
        },
    )


def _grant_public(ent: Entitlement, grant: Grant, now: datetime) -> DeviceGrantPublic:
    return DeviceGrantPublic(
        entitlement_id=ent.id,
        account_id=ent.account_id,
        product_id=ent.product_id,
        license_model=ent.license_model,
        status=ent.status,
        starts_at=ent.starts_at,
        ends_at=ent.ends_at,
        grace_seconds=ent.grace_seconds,
        temporary_until=grant.temporary_until,
        seat_held=grant.seat_held,
        in_force=in_force(grant, now),
    )
