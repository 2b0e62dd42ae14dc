"""Bulk grant loading and bulk issuance equal the single-device path; N+1 guards.

A varied fleet (several products and license models, overlapping grants, a
feature-key clash, overrides, floating seats held, stale and released,
temporary activations live and lapsed, closed activations, suspended, revoked,
future and expired entitlements) is loaded in bulk and compared, device by
device, with a reference copy of the original per-device loader. Runs on every
backend of ``tests/hub/conftest.py``.
"""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event, insert, select
from sqlalchemy.orm import Session, sessionmaker

from hub.entitlements import grants
from hub.entitlements import service as entitlements
from hub.entitlements.effective import FeatureDef, Grant, effective_features, lease_not_after
from hub.entitlements.models import Activation, Entitlement, Feature, SeatLease
from hub.entitlements.schemas import AccountCreate, FeatureCreate
from hub.inbound import InboundRouter
from hub.manifests import service
from hub.manifests.models import DeviceManifest
from hub.mqtt.outbound import Inbound
from hub.registry import service as registry
from hub.registry.claims import ClaimPolicy
from hub.registry.models import Device
from hub.registry.schemas import DeviceClassCreate, ProductCreate
from hub.registry.tenants import create_tenant
from protocols import topics
from protocols.cose import CoseKey
from protocols.manifest import verify_manifest
from protocols.messages import ManifestAck, ManifestDelivery, decode_as, encode_message
from tests.hub.conftest import Clock
from tests.hub.fleet import ANCHORS, MANIFEST_POLICY, MANIFEST_SIGNER

KEY = CoseKey.ed25519(MANIFEST_SIGNER.kid, MANIFEST_SIGNER.public_key_bytes())
SEAT_TIMEOUT = timedelta(seconds=90)

# ------------------------------------------------------------------ reference


def reference_grants(
    session: Session, device_id: str, seat_timeout: timedelta | None = None
) -> tuple[list[tuple[str, Grant]], dict[str, FeatureDef]]:
    """The original per-device loader (four queries), kept as the oracle."""
    rows = session.execute(
        select(Entitlement, Activation)
        .join(Activation, Activation.entitlement_id == Entitlement.id)
        .where(Activation.device_id == device_id, Activation.deactivated_at.is_(None))
        .order_by(Entitlement.created_at, Entitlement.id)
    ).all()
    seats = {
        seat.entitlement_id: seat
        for seat in session.scalars(
            select(SeatLease).where(
                SeatLease.device_id == device_id, SeatLease.released_at.is_(None)
            )
        )
    }
    ever = set(
        session.scalars(
            select(Entitlement.product_id)
            .join(Activation, Activation.entitlement_id == Entitlement.id)
            .where(Activation.device_id == device_id)
            .distinct()
        )
    )
    catalog: dict[str, FeatureDef] = {}
    keys: dict[str, set[str]] = defaultdict(set)
    for f in session.scalars(
        select(Feature)
        .where(Feature.product_id.in_(sorted(ever)))
        .order_by(Feature.product_id, Feature.key)
    ):
        keys[f.product_id].add(f.key)
        catalog.setdefault(
            f.key,
            FeatureDef(f.key, f.kind, f.default_limit, f.cap_per_period, f.period, f.overage),  # type: ignore[arg-type]
        )
    pairs = []
    for ent, activation in rows:
        seat = seats.get(ent.id)
        seat_end = seat.heartbeat_at + seat_timeout if seat and seat_timeout else None
        grant = Grant(
            license_model=ent.license_model,
            status=ent.status,
            starts_at=ent.starts_at,
            ends_at=ent.ends_at,
            grace_seconds=ent.grace_seconds,
            features=frozenset(keys.get(ent.product_id, set())),
            overrides=ent.feature_overrides or {},
            temporary_until=activation.temporary_until,
            seat_held=seat is not None,
            seat_expires_at=seat_end,
            entitlement_id=ent.id,
        )
        pairs.append((ent.id, grant))
    return pairs, catalog


# ------------------------------------------------------------------ fleet


@dataclass
class VariedFleet:
    """Devices with varied grants; ``claimed`` ones may hold manifests."""

    tenant_id: str
    devices: list[str]
    claimed: list[str]


_PRODUCTS: dict[str, list[FeatureCreate]] = {
    "GW": [
        FeatureCreate(key="vpn", kind="flag"),
        FeatureCreate(key="users", kind="limit", default_limit=5),
        FeatureCreate(key="api.calls", kind="metered", cap_per_period=1000, period="month"),
    ],
    "ST": [
        FeatureCreate(key="storage", kind="limit", default_limit=10),
        FeatureCreate(key="users", kind="limit", default_limit=7),  # a key clash
    ],
    "AN": [FeatureCreate(key="analytics", kind="flag")],
}


def _entitlement_specs(now: datetime) -> list[dict[str, Any]]:
    day, minute = timedelta(days=1), timedelta(minutes=1)
    return [
        {"p": "GW", "model": "perpetual"},
        {"p": "GW", "model": "subscription", "ends_at": now + 10 * day, "grace": 3600},
        {"p": "GW", "model": "subscription", "ends_at": now - minute, "grace": 3600},  # in grace
        {"p": "GW", "model": "subscription", "ends_at": now - 2 * day, "grace": 60},  # over
        {"p": "GW", "model": "trial", "ends_at": now + 2 * day},
        {"p": "GW", "model": "perpetual", "starts_at": now + 3 * day},  # not yet
        {"p": "GW", "model": "perpetual", "status": "suspended"},
        {"p": "GW", "model": "perpetual", "status": "revoked"},
        {"p": "GW", "model": "floating"},
        {"p": "GW", "model": "metered", "overrides": {"api.calls": {"cap": 50}}},
        {"p": "GW", "model": "perpetual", "overrides": {"users": {"limit": 50}}},
        {"p": "GW", "model": "perpetual", "overrides": {"vpn": {"enabled": False}}},
        {"p": "ST", "model": "subscription", "ends_at": now + 5 * day},
        {"p": "ST", "model": "node_locked", "overrides": {"storage": {"limit": 99}}},
        {"p": "ST", "model": "floating"},
        {"p": "AN", "model": "perpetual"},
        {"p": "AN", "model": "trial", "ends_at": now + 1 * day, "status": "expired"},
    ]


def _catalogue(s: Session, tenant_id: str, now: datetime) -> tuple[dict[str, str], str]:
    products = {}
    for sku, features in _PRODUCTS.items():
        product = registry.create_product(
            s, tenant_id=tenant_id, actor="test", now=now, data=ProductCreate(sku=sku, name=sku)
        )
        for body in features:
            entitlements.create_feature(
                s, tenant_id=tenant_id, actor="test", now=now, product_id=product.id, data=body
            )
        products[sku] = product.id
    account = entitlements.create_account(
        s, tenant_id=tenant_id, actor="test", now=now, data=AccountCreate(name="Acme")
    )
    s.flush()
    return products, account.id


def _entitlements(
    s: Session, tenant_id: str, products: dict[str, str], account_id: str, now: datetime
) -> list[tuple[str, dict[str, Any]]]:
    made = []
    for index, spec in enumerate(_entitlement_specs(now)):
        ent_id = str(uuid.uuid4())
        s.execute(
            insert(Entitlement).values(
                id=ent_id,
                tenant_id=tenant_id,
                account_id=account_id,
                product_id=products[spec["p"]],
                license_model=spec["model"],
                quantity=1000,
                starts_at=spec.get("starts_at", now - timedelta(days=30)),
                ends_at=spec.get("ends_at"),
                grace_seconds=spec.get("grace", 0),
                status=spec.get("status", "active"),
                feature_overrides=spec.get("overrides", {}),
                created_at=now - timedelta(days=30) + timedelta(minutes=index % 5),
                updated_at=now,
            )
        )
        made.append((ent_id, spec))
    return made


def _devices(s: Session, tenant_id: str, n: int, now: datetime, prefix: str) -> list[str]:
    device_class = registry.create_device_class(
        s, tenant_id=tenant_id, actor="test", now=now,
        data=DeviceClassCreate(
            name=f"{prefix}-class",
            vendor_id="fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe",  # type: ignore[arg-type]
            class_id="1492af14-2569-5e48-bf42-9b2d51f2ab45",  # type: ignore[arg-type]
        ),
    )  # fmt: skip
    ids = [registry.new_device_id() for _ in range(n)]
    s.execute(
        insert(Device),
        [
            {
                "id": d,
                "tenant_id": tenant_id,
                "serial": f"{prefix}-{i:05d}",
                "device_class_id": device_class.id,
                "tags": [],
                "status": "disabled" if i % 11 == 5 else "claimed",
                "claimed_at": now,
                "created_at": now,
                "online": True,
                "last_seen_at": now,
            }
            for i, d in enumerate(ids)
        ],
    )
    return ids


def _activate(
    s: Session,
    rng: random.Random,
    tenant_id: str,
    devices: list[str],
    made: list[tuple[str, dict[str, Any]]],
    now: datetime,
) -> None:
    activations, seats = [], []
    day = timedelta(days=1)
    for device_id in devices:
        for ent_id, spec in rng.sample(made, rng.randint(0, 4)):
            closed = rng.random() < 0.15
            temporary = rng.choice([None, None, None, now + timedelta(hours=2), now - day])
            activations.append(
                {
                    "id": str(uuid.uuid4()),
                    "tenant_id": tenant_id,
                    "entitlement_id": ent_id,
                    "device_id": device_id,
                    "activated_at": now - timedelta(days=2),
                    "deactivated_at": now - day if closed else None,
                    "temporary_until": temporary,
                }
            )
            if spec["model"] == "floating" and not closed and rng.random() < 0.7:
                heartbeat = now - timedelta(seconds=rng.choice([5, 60, 600]))
                released = now - timedelta(seconds=1) if rng.random() < 0.2 else None
                seats.append(
                    {
                        "tenant_id": tenant_id,
                        "entitlement_id": ent_id,
                        "device_id": device_id,
                        "acquired_at": now - timedelta(hours=1),
                        "heartbeat_at": heartbeat,
                        "released_at": released,
                    }
                )
    s.execute(insert(Activation), activations)
    if seats:
        s.execute(insert(SeatLease), seats)


def make_fleet(factory: sessionmaker[Session], now: datetime, n: int, seed: int) -> VariedFleet:
    """``n`` devices (every 11th disabled) with random grants from the specs above."""
    rng = random.Random(seed)
    with factory() as s:
        tenant, _ = create_tenant(s, f"bulk-{uuid.uuid4().hex[:8]}", now, actor="test")
        s.flush()
        products, account_id = _catalogue(s, tenant.id, now)
        made = _entitlements(s, tenant.id, products, account_id, now)
        devices = _devices(s, tenant.id, n, now, f"bulk{seed}")
        _activate(s, rng, tenant.id, devices, made, now)
        claimed = list(
            s.scalars(select(Device.id).where(Device.id.in_(devices), Device.status == "claimed"))
        )
        s.commit()
    return VariedFleet(tenant.id, devices, sorted(claimed))


@pytest.fixture(scope="module")
def varied(session_factory: sessionmaker[Session]) -> VariedFleet:
    return make_fleet(session_factory, Clock().now, 120, seed=7)


# ------------------------------------------------------------------ equality


@pytest.mark.parametrize("seat_timeout", [None, SEAT_TIMEOUT])
@pytest.mark.parametrize("chunk", [grants.IN_CHUNK, 7])
def test_bulk_snapshots_equal_the_reference(
    session_factory: sessionmaker[Session],
    varied: VariedFleet,
    monkeypatch: pytest.MonkeyPatch,
    seat_timeout: timedelta | None,
    chunk: int,
) -> None:
    monkeypatch.setattr(grants, "IN_CHUNK", chunk)
    now = Clock().now
    with session_factory() as s:
        bulk = grants.load_grants_for_devices(
            s, [*varied.devices, "dev-unknown"], seat_timeout=seat_timeout
        )
        assert set(bulk) == {*varied.devices, "dev-unknown"}
        assert bulk["dev-unknown"].pairs == [] and bulk["dev-unknown"].catalog == {}
        memo = grants.RightsMemo(now, 86_400)
        for device_id in varied.devices:
            pairs, catalog = reference_grants(s, device_id, seat_timeout)
            loaded = bulk[device_id]
            assert [(e.id, g) for e, g in loaded.pairs] == pairs
            assert list(loaded.catalog.items()) == list(catalog.items())
            ref = [g for _, g in pairs]
            rights = memo(loaded)
            assert rights.features == effective_features(ref, catalog, now=now)
            assert rights.not_after == lease_not_after(ref, now, 86_400)


def test_the_fleet_is_varied(session_factory: sessionmaker[Session], varied: VariedFleet) -> None:
    """Guard against a degenerate fixture: many distinct outcomes, every kind of input."""
    now = Clock().now
    with session_factory() as s:
        bulk = grants.load_grants_for_devices(s, varied.devices, seat_timeout=SEAT_TIMEOUT)
    features = {
        str(sorted(effective_features(d.grants, d.catalog, now=now).items())) for d in bulk.values()
    }
    leases = {lease_not_after(d.grants, now, 86_400) for d in bulk.values()}
    every = [g for d in bulk.values() for g in d.grants]
    assert len(features) >= 15 and len(leases) >= 4
    assert {g.status for g in every} >= {"active", "suspended", "revoked", "expired"}
    assert any(g.temporary_until for g in every) and any(g.seat_held for g in every)
    assert any(g.seat_expires_at and g.seat_expires_at <= now for g in every)
    assert any(len(d.pairs) >= 3 for d in bulk.values())


def test_single_device_functions_equal_the_reference(
    session_factory: sessionmaker[Session], varied: VariedFleet
) -> None:
    now = Clock().now
    with session_factory() as s:
        for device_id in varied.devices[:40]:
            pairs, catalog = reference_grants(s, device_id, SEAT_TIMEOUT)
            ref = [g for _, g in pairs]
            bare, _ = reference_grants(s, device_id)
            assert grants.device_features(s, device_id, now) == effective_features(
                [g for _, g in bare], catalog, now=now
            )
            assert grants.device_lease(
                s, device_id, now, 3600, seat_timeout=SEAT_TIMEOUT
            ) == lease_not_after(ref, now, 3600)


def test_bulk_issue_equals_per_device_rights(
    session_factory: sessionmaker[Session], varied: VariedFleet
) -> None:
    now = Clock().now
    policy = MANIFEST_POLICY
    with session_factory() as s:
        before = {r.device_id: r.seq for r in s.scalars(select(DeviceManifest))}
        out = service.issue(s, [*varied.devices, "dev-unknown"], now=now, policy=policy)
        s.commit()
    assert sorted(o.track or "" for o in out) == varied.claimed  # disabled ones skipped
    with session_factory() as s:
        rows = {r.device_id: r for r in s.scalars(select(DeviceManifest))}
        for delivery in out:
            device_id = delivery.track or ""
            manifest = verify_manifest(decode_as(ManifestDelivery, delivery.payload).signed, [KEY])
            features = grants.device_features(s, device_id, now)
            lease = grants.device_lease(s, device_id, now, policy.lease_seconds)
            not_after = max(lease, now + timedelta(seconds=1))
            assert manifest.device_id == device_id
            assert manifest.seq == before.get(device_id, 0) + 1 == rows[device_id].seq
            assert manifest.features == features
            assert manifest.not_after == int(not_after.timestamp())
            assert rows[device_id].not_after == not_after
            assert rows[device_id].features_hash == service.features_hash(features)
            assert rows[device_id].delivery_state == "pending"


# ------------------------------------------------------------------ statement counts


@dataclass
class Statements:
    """Counts the statements sent to the database while attached."""

    count: int = 0

    def __call__(self, *_args: Any, **_kwargs: Any) -> None:
        self.count += 1


@pytest.fixture
def statements(engine: Engine) -> Iterator[Statements]:
    counter = Statements()
    event.listen(engine, "before_cursor_execute", counter)
    yield counter
    event.remove(engine, "before_cursor_execute", counter)


@pytest.fixture(scope="module")
def fleet200(session_factory: sessionmaker[Session]) -> VariedFleet:
    return make_fleet(session_factory, Clock().now, 220, seed=11)


def _issue_counted(
    factory: sessionmaker[Session], ids: list[str], now: datetime, statements: Statements
) -> tuple[int, list[Any]]:
    with factory() as s:
        s.execute(select(1))  # open the transaction outside the count
        statements.count = 0
        out = service.issue(s, ids, now=now, policy=MANIFEST_POLICY)
        counted = statements.count
        s.commit()
    return counted, out


def test_issue_runs_a_bounded_number_of_statements(
    session_factory: sessionmaker[Session], fleet200: VariedFleet, statements: Statements
) -> None:
    now = Clock().now
    assert len(fleet200.claimed) >= 200
    first, out = _issue_counted(session_factory, fleet200.devices, now, statements)  # inserts
    second, _ = _issue_counted(session_factory, fleet200.devices, now, statements)  # updates
    assert len(out) == len(fleet200.claimed)
    # devices, manifests, activations, seats, products ever, features, the writes
    assert first < 30 and second < 30, (first, second)


def test_a_batch_of_acks_runs_a_bounded_number_of_statements(
    session_factory: sessionmaker[Session], fleet200: VariedFleet, statements: Statements
) -> None:
    now = Clock().now
    with session_factory() as s:
        out = service.issue(s, fleet200.devices, now=now, policy=MANIFEST_POLICY)
        s.commit()
    with session_factory() as s:
        seqs = {r.device_id: r.seq for r in s.scalars(select(DeviceManifest))}
    router = InboundRouter(
        session_factory=session_factory,
        claim_policy=ClaimPolicy(anchors=ANCHORS, skew_seconds=300),
        manifest_policy=MANIFEST_POLICY,
        clock=lambda: now,
        max_payload_bytes=64 * 1024,
    )
    batch = [
        Inbound(
            topics.device_up(d, topics.UpKind.MANIFEST_ACK),
            encode_message(ManifestAck(seq=seqs.get(d, 1), status="accepted")),
        )
        for d in fleet200.devices  # the disabled ones are dropped
    ]
    statements.count = 0
    result = router.handle_batch(batch)
    assert result.outbound == [] and len(out) == len(fleet200.claimed)
    assert statements.count < 10, statements.count
    with session_factory() as s:
        states = {
            r.device_id: r.delivery_state
            for r in s.scalars(
                select(DeviceManifest).where(DeviceManifest.device_id.in_(fleet200.devices))
            )
        }
    assert states == dict.fromkeys(fleet200.claimed, "acknowledged")


def test_chunks_follow_the_configured_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grants, "IN_CHUNK", 3)
    assert [list(c) for c in grants.chunks(list("abcdefg"))] == [
        ["a", "b", "c"],
        ["d", "e", "f"],
        ["g"],
    ]
    assert [len(c) for c in grants.chunks(list(range(2000)), 900)] == [900, 900, 200]  # type: ignore[arg-type]
