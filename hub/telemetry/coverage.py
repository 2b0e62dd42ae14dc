"""Which entitlement covers a usage record: account, product, cap, period.

A record of meter ``m`` recorded by device ``d`` at ``t`` is **covered** by an
entitlement when all of these hold:

- ``d`` had an activation of the entitlement open at ``t`` (device times
  are whole seconds, so an activation within second ``t`` counts from ``t``)
  (``activated_at <= t``, and ``t < deactivated_at`` when it was closed, and
  ``t < temporary_until`` for a rehost's temporary activation);
- the entitlement's product has a ``metered`` feature with key ``m``, not
  disabled by the entitlement's ``feature_overrides``;
- the entitlement's status is ``active`` or ``expired`` (an expired one covers
  the usage of its term), its term holds ``t`` (``starts_at <= t <
  ends_at + grace``);
- for a ``floating`` entitlement, ``d`` held one of its seats at ``t``.

Suspended and revoked entitlements cover nothing (their history does not say
since when), so usage recorded before a revocation and received after it is
reported as leakage rather than billed silently. When several entitlements
cover a record, the one created first (then the smallest id) is billed; the
cap is the **sum** of the covering grants' caps, as in the device's manifest
(:mod:`hub.entitlements.effective`), and the period is the feature's.

:class:`Coverages` loads everything for one batch of devices with a handful
of queries and then answers per record without the database.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import BindParameter, bindparam, select
from sqlalchemy.orm import Session

from hub.entitlements.models import Activation, Entitlement, Feature, SeatLease
from hub.telemetry.store import chunks

_COVERING_STATUSES = ("active", "expired")
_NEVER = float("inf")


@dataclass(frozen=True, slots=True)
class Coverage:
    """What a covered record is billed to, and the cap it counts against."""

    account_id: str
    product_id: str
    entitlement_id: str
    cap: int | None
    period: str | None


@dataclass(frozen=True, slots=True)
class _Term:
    """A metered feature of one activated entitlement, with the instants it covers."""

    entitlement_id: str
    account_id: str
    product_id: str
    order: tuple[datetime, str]
    start: float
    end: float
    cap: int | None
    period: str | None
    seats: tuple[tuple[float, float], ...] | None  # floating: held seats; else None

    def edges(self) -> list[float]:
        """The instants at which this term's coverage may change."""
        points = [self.start, self.end]
        for start, end in self.seats or ():
            points += (start, end)
        return points

    def covers(self, ts: float) -> bool:
        """Whether the device could use the feature under this term at ``ts``."""
        if not self.start <= ts < self.end:
            return False
        if self.seats is None:
            return True
        return any(start <= ts < end for start, end in self.seats)


def _stamp(value: datetime | None) -> float:
    return _NEVER if value is None else value.timestamp()


# The statements run for every MQTT batch of usage are built once, with an
# expanding IN parameter: building and keying a select each time cost about
# as much as executing it (measured: 147 against 91 µs for a 20-id lookup).
_IDS: BindParameter[list[str]] = bindparam("ids", expanding=True)
_METERED_KEYS = (
    select(Feature.tenant_id, Feature.key)
    .where(Feature.tenant_id.in_(_IDS), Feature.kind == "metered")
    .distinct()
)
_ACTIVATIONS = (
    select(
        Activation.device_id,
        Activation.entitlement_id,
        Activation.activated_at,
        Activation.deactivated_at,
        Activation.temporary_until,
    )
    .join(Entitlement, Activation.entitlement_id == Entitlement.id)
    .where(Activation.device_id.in_(_IDS), Entitlement.status.in_(_COVERING_STATUSES))
)
_GRANTS = select(
    Entitlement.id,
    Entitlement.account_id,
    Entitlement.product_id,
    Entitlement.license_model,
    Entitlement.starts_at,
    Entitlement.ends_at,
    Entitlement.grace_seconds,
    Entitlement.feature_overrides,
    Entitlement.created_at,
).where(Entitlement.id.in_(_IDS), Entitlement.status.in_(_COVERING_STATUSES))
_FEATURES = select(Feature.product_id, Feature.key, Feature.cap_per_period, Feature.period).where(
    Feature.product_id.in_(_IDS), Feature.kind == "metered"
)


def metered_keys(session: Session, tenant_ids: Collection[str]) -> dict[str, frozenset[str]]:
    """Every tenant's metered feature keys (any product): the meters it may receive."""
    found: dict[str, set[str]] = defaultdict(set)
    for chunk in chunks(sorted(tenant_ids)):
        rows = session.execute(_METERED_KEYS, {"ids": list(chunk)})
        for tenant_id, key in rows:
            found[tenant_id].add(key)
    return {tenant_id: frozenset(found.get(tenant_id, ())) for tenant_id in tenant_ids}


@dataclass
class Coverages:
    """Coverage of every record of one batch, from one snapshot of the entitlements."""

    terms: dict[tuple[str, str], list[_Term]] = field(default_factory=dict)
    # per (device, meter): the last answer and the [lo, hi) it holds for
    _last: dict[tuple[str, str], tuple[float, float, Coverage | None]] = field(default_factory=dict)

    @classmethod
    def load(cls, session: Session, device_ids: Iterable[str]) -> Coverages:
        """Snapshot the activations, metered features and seats of ``device_ids``.

        Plain column rows, not ORM entities: this runs for every MQTT batch of
        usage, and building and tracking an ``Activation`` and ``Entitlement``
        object per device cost more than the rest of the load (measured).
        """
        ids = sorted(set(device_ids))
        activations = _activations(session, ids)
        grants = _grants(session, {row.entitlement_id for row in activations})
        features = _metered_features(session, {grant.product_id for grant in grants.values()})
        floating = {g.id for g in grants.values() if g.license_model == "floating"}
        seats = _seats(session, ids, floating)
        coverages = cls()
        for activation in activations:
            grant = grants.get(activation.entitlement_id)
            if grant is None:
                continue  # its status changed between the two reads: covers nothing
            for key, (cap, period) in features.get(grant.product_id, {}).items():
                term = _term(
                    activation,
                    grant,
                    key=key,
                    cap=cap,
                    period=period,
                    seats=seats.get((activation.device_id, grant.id)),
                )
                if term is not None:
                    coverages.terms.setdefault((activation.device_id, key), []).append(term)
        for terms in coverages.terms.values():
            terms.sort(key=lambda term: term.order)
        return coverages

    def resolve(self, device_id: str, meter: str, ts: float) -> Coverage | None:
        """The coverage of a record of ``meter`` recorded by ``device_id`` at ``ts``.

        The answer is constant between two consecutive term edges, so it is
        remembered with that interval: a batch's records mostly fall in one.
        """
        key = (device_id, meter)
        last = self._last.get(key)
        if last is not None and last[0] <= ts < last[1]:
            return last[2]
        terms = self.terms.get(key)
        if not terms:
            self._last[key] = (-_NEVER, _NEVER, None)
            return None
        coverage = _combine([term for term in terms if term.covers(ts)])
        edges = [edge for term in terms for edge in term.edges()]
        low = max((edge for edge in edges if edge <= ts), default=-_NEVER)
        high = min((edge for edge in edges if edge > ts), default=_NEVER)
        self._last[key] = (low, high, coverage)
        return coverage


def _combine(covering: list[_Term]) -> Coverage | None:
    if not covering:
        return None
    first = covering[0]
    caps = [term.cap for term in covering if term.cap is not None]
    return Coverage(
        account_id=first.account_id,
        product_id=first.product_id,
        entitlement_id=first.entitlement_id,
        cap=sum(caps) if caps else None,
        period=first.period,
    )


class _Activation(NamedTuple):
    device_id: str
    entitlement_id: str
    activated_at: datetime
    deactivated_at: datetime | None
    temporary_until: datetime | None


class _Grant(NamedTuple):
    """The columns of an entitlement that coverage needs."""

    id: str
    account_id: str
    product_id: str
    license_model: str
    starts_at: datetime
    ends_at: datetime | None
    grace_seconds: int
    feature_overrides: dict[str, Any] | None
    created_at: datetime


def _activations(session: Session, device_ids: list[str]) -> list[_Activation]:
    """The activations of ``device_ids`` whose entitlement may cover usage."""
    found: list[_Activation] = []
    for chunk in chunks(device_ids):
        rows = session.execute(_ACTIVATIONS, {"ids": list(chunk)})
        found.extend(_Activation(*row) for row in rows)
    return found


def _grants(session: Session, entitlement_ids: Collection[str]) -> dict[str, _Grant]:
    """The covering entitlements of ``entitlement_ids``: one row each, however many devices."""
    found: dict[str, _Grant] = {}
    for chunk in chunks(sorted(entitlement_ids)):
        rows = session.execute(_GRANTS, {"ids": list(chunk)})
        found.update((row[0], _Grant(*row)) for row in rows)
    return found


def _metered_features(
    session: Session, product_ids: Collection[str]
) -> dict[str, dict[str, tuple[int | None, str | None]]]:
    found: dict[str, dict[str, tuple[int | None, str | None]]] = defaultdict(dict)
    for chunk in chunks(sorted(product_ids)):
        rows = session.execute(_FEATURES, {"ids": list(chunk)})
        for product_id, key, cap, period in rows:
            found[product_id][key] = (cap, period)
    return found


def _seats(
    session: Session, device_ids: list[str], entitlement_ids: Collection[str]
) -> dict[tuple[str, str], list[tuple[float, float]]]:
    held: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    if not entitlement_ids:
        return held
    for chunk in chunks(device_ids):
        rows = session.execute(
            select(
                SeatLease.device_id,
                SeatLease.entitlement_id,
                SeatLease.acquired_at,
                SeatLease.released_at,
            ).where(
                SeatLease.device_id.in_(chunk),
                SeatLease.entitlement_id.in_(sorted(entitlement_ids)),
            )
        )
        for device_id, entitlement_id, acquired, released in rows:
            held[(device_id, entitlement_id)].append((_stamp(acquired), _stamp(released)))
    return held


def _term(
    activation: _Activation,
    ent: _Grant,
    *,
    key: str,
    cap: int | None,
    period: str | None,
    seats: list[tuple[float, float]] | None,
) -> _Term | None:
    override = (ent.feature_overrides or {}).get(key, {})
    if not isinstance(override, dict) or override.get("enabled", True) is False:
        return None
    override_cap = override.get("cap", cap)
    ends = [activation.deactivated_at, activation.temporary_until]
    if ent.ends_at is not None:
        ends.append(ent.ends_at + timedelta(seconds=ent.grace_seconds))
    end = min((_stamp(value) for value in ends if value is not None), default=_NEVER)
    return _Term(
        entitlement_id=ent.id,
        account_id=ent.account_id,
        product_id=ent.product_id,
        order=(ent.created_at, ent.id),
        # Device timestamps are whole seconds (truncated): a term that starts
        # within second t covers records stamped t.
        start=math.floor(max(activation.activated_at.timestamp(), ent.starts_at.timestamp())),
        end=end,
        cap=override_cap if isinstance(override_cap, int) else cap,
        period=period,
        seats=tuple(seats or ()) if ent.license_model == "floating" else None,
    )
