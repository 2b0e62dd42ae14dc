"""Effective features: what a device may use now, from snapshots of its grants.

Pure functions, no database and no clock: the caller passes ``now``.
:mod:`hub.entitlements.grants` builds the snapshots from the database.

A grant is **in force** at ``now`` when all of these hold:

- its status is ``active`` (``suspended``, ``revoked`` and ``expired`` never count);
- ``starts_at <= now``;
- it has no end, or ``now < ends_at + grace`` (at exactly ``ends_at + grace`` it is out);
- it is not a temporary (rehost) activation, or ``now < temporary_until``;
- it is not floating, or the device holds one of its seats (and, when the seat
  snapshot carries ``seat_expires_at``, ``now < seat_expires_at``).

Overlapping grants of the same feature combine, each rule chosen so that
adding a grant never takes anything away:

- ``enabled``: any in-force grant that enables the feature (an override
  ``enabled: false`` makes that one grant contribute nothing);
- ``limit`` (limit features): the largest limit among the enabling grants;
- ``cap`` (metered features): the **sum** of the enabling grants' caps, since
  each paid grant adds its own allowance for the period;
- ``period`` and ``overage``: from the feature definition (overrides cannot
  change them, so grants never disagree).

Every feature of the catalogue appears in the result; one no grant enables
is ``FeatureEntry(enabled=False)``, so a withdrawn feature is stated
explicitly rather than silently missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from protocols.manifest import FeatureEntry, FeatureKind, OveragePolicy, Period


@dataclass(frozen=True, slots=True)
class FeatureDef:
    """A product feature's definition (see :class:`hub.entitlements.models.Feature`)."""

    key: str
    kind: FeatureKind
    default_limit: int | None = None
    cap_per_period: int | None = None
    period: Period | None = None
    overage: OveragePolicy | None = None


@dataclass(frozen=True, slots=True)
class Grant:
    """A snapshot of one entitlement as activated on one device.

    Attributes:
        license_model: ``perpetual``, ``subscription``, ``trial``,
            ``node_locked``, ``floating`` or ``metered``.
        status: the entitlement's status.
        starts_at: start of the term.
        ends_at: end of the term, or ``None`` for no end.
        grace_seconds: how long the grant stays in force after ``ends_at``.
        features: keys of the product's features this grant covers.
        overrides: per-feature ``{"enabled"?, "limit"?, "cap"?}``.
        temporary_until: end of a temporary (rehost) activation, if any.
        seat_held: for floating grants, whether the device holds a seat.
        seat_expires_at: when the held seat lapses without a heartbeat, if known.
        entitlement_id: for callers' bookkeeping; not used by the rules.
    """

    license_model: str
    status: str
    starts_at: datetime
    ends_at: datetime | None
    grace_seconds: int = 0
    features: frozenset[str] = frozenset()
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    temporary_until: datetime | None = None
    seat_held: bool = False
    seat_expires_at: datetime | None = None
    entitlement_id: str = ""

    @property
    def hard_end(self) -> datetime | None:
        """The first instant this grant is no longer in force, ignoring status."""
        ends = [
            self.ends_at + timedelta(seconds=self.grace_seconds) if self.ends_at else None,
            self.temporary_until,
            self.seat_expires_at if self.license_model == "floating" else None,
        ]
        present = [end for end in ends if end is not None]
        return min(present) if present else None


def in_force(grant: Grant, now: datetime) -> bool:
    """Whether ``grant`` gives rights at ``now`` (rules in the module docstring)."""
    if grant.status != "active" or now < grant.starts_at:
        return False
    if grant.license_model == "floating" and not grant.seat_held:
        return False
    end = grant.hard_end
    return end is None or now < end


def _contribution(grant: Grant, feature: FeatureDef) -> FeatureEntry | None:
    """What one in-force grant gives for ``feature`` (``None``: nothing)."""
    if feature.key not in grant.features:
        return None
    override = grant.overrides.get(feature.key, {})
    if override.get("enabled", True) is False:
        return None
    if feature.kind == "limit":
        return FeatureEntry(enabled=True, limit=override.get("limit", feature.default_limit))
    if feature.kind == "metered":
        return FeatureEntry(
            enabled=True,
            cap=override.get("cap", feature.cap_per_period),
            period=feature.period,
            overage=feature.overage,
        )
    return FeatureEntry(enabled=True)


def _combine(feature: FeatureDef, parts: Sequence[FeatureEntry]) -> FeatureEntry:
    if not parts:
        return FeatureEntry(enabled=False)
    if feature.kind == "limit":
        limits = [p.limit for p in parts if p.limit is not None]
        return FeatureEntry(enabled=True, limit=max(limits) if limits else None)
    if feature.kind == "metered":
        caps = [p.cap for p in parts if p.cap is not None]
        return FeatureEntry(
            enabled=True,
            cap=sum(caps) if caps else None,
            period=feature.period,
            overage=feature.overage,
        )
    return FeatureEntry(enabled=True)


def effective_features(
    grants: Sequence[Grant], catalog: Mapping[str, FeatureDef], *, now: datetime
) -> dict[str, FeatureEntry]:
    """Combine a device's grants into one entry per catalogue feature.

    Args:
        grants: snapshots of every entitlement activated on the device (any
            status; those not in force are ignored).
        catalog: the definitions of every feature to report, by key.
        now: the instant to evaluate at (tz-aware).

    Returns:
        ``{key: FeatureEntry}`` for every key of ``catalog``, sorted by key.
    """
    live = [grant for grant in grants if in_force(grant, now)]
    result: dict[str, FeatureEntry] = {}
    for key in sorted(catalog):
        feature = catalog[key]
        parts = [c for c in (_contribution(g, feature) for g in live) if c is not None]
        result[key] = _combine(feature, parts)
    return result


def lease_not_after(grants: Sequence[Grant], now: datetime, lease_seconds: int) -> datetime:
    """The latest ``not_after`` a manifest issued at ``now`` may carry.

    The lease never outlives a right: it is the earliest of ``now +
    lease_seconds``, the end (with grace) of every in-force grant, every
    temporary activation's end and every held seat's expiry. It also stops at
    the start of a grant that is active but not yet started, so the device
    asks again when that grant begins.

    Args:
        grants: snapshots of every entitlement activated on the device.
        now: issue time.
        lease_seconds: the longest lease the hub grants (> 0).

    Returns:
        A tz-aware instant strictly after ``now``.
    """
    candidates = [now + timedelta(seconds=lease_seconds)]
    for grant in grants:
        if in_force(grant, now):
            if grant.hard_end is not None:
                candidates.append(grant.hard_end)
        elif grant.status == "active" and grant.starts_at > now:
            candidates.append(grant.starts_at)
    return min(candidates)
