"""Usage thresholds and expiring entitlements, turned into events.

``usage.threshold_reached``: an account's usage of a metered feature in the
feature's cap period (the UTC calendar day or month, as devices count it)
reaches a threshold percentage (80 and 100 by default) of the account's cap.
The account's cap is what its devices may use together: the sum, over its
in-force entitlements of the product, of the feature's cap (or the
entitlement's ``cap`` override) times the entitlement's open activations.
Each threshold fires once per account, feature and cap period.

``entitlement.expiring``: an active entitlement ends within the lead time
(7 days by default). It fires once per entitlement and end date, so extending
an entitlement and letting it approach its new end warns again.

Both checks are idempotent (event ``dedup_key``s); the job may run as often
as it likes on any number of workers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hub.billing import events
from hub.billing.columns import decimal_text
from hub.entitlements.models import Activation, Entitlement, Feature
from hub.telemetry.queries import usage_totals

CapKey = tuple[str, str, str]
"""``(account_id, product_id, meter)``."""


def cap_period(kind: str, now: datetime) -> tuple[datetime, datetime]:
    """The UTC calendar day or month containing ``now``."""
    moment = now.astimezone(UTC)
    if kind == "day":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + timedelta(days=1)
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
    return start, start.replace(year=year, month=month)


@dataclass(frozen=True, slots=True)
class _Metered:
    product_id: str
    key: str
    cap: int | None
    period: str


def _metered_features(session: Session, tenant_id: str) -> dict[str, list[_Metered]]:
    rows = session.execute(
        select(Feature.product_id, Feature.key, Feature.cap_per_period, Feature.period).where(
            Feature.tenant_id == tenant_id, Feature.kind == "metered", Feature.period.is_not(None)
        )
    )
    found: dict[str, list[_Metered]] = defaultdict(list)
    for product_id, key, cap, period in rows:
        found[product_id].append(_Metered(product_id, key, cap, str(period)))
    return found


def _in_force(entitlement: Entitlement, now: datetime) -> bool:
    if entitlement.status != "active" or entitlement.starts_at > now:
        return False
    if entitlement.ends_at is None:
        return True
    return now < entitlement.ends_at + timedelta(seconds=entitlement.grace_seconds)


def account_caps(session: Session, tenant_id: str, now: datetime) -> dict[CapKey, tuple[int, str]]:
    """Each account's cap per metered feature in force at ``now``, with its period kind."""
    features = _metered_features(session, tenant_id)
    if not features:
        return {}
    open_count = func.count(Activation.id)
    rows = session.execute(
        select(Entitlement, open_count)
        .join(Activation, Activation.entitlement_id == Entitlement.id)
        .where(
            Entitlement.tenant_id == tenant_id,
            Entitlement.status == "active",
            Activation.deactivated_at.is_(None),
        )
        .group_by(Entitlement.id)
    )
    caps: dict[CapKey, tuple[int, str]] = {}
    for entitlement, devices in rows:
        if not _in_force(entitlement, now):
            continue
        for feature in features.get(entitlement.product_id, []):
            override = (entitlement.feature_overrides or {}).get(feature.key, {})
            cap = override.get("cap", feature.cap)
            if override.get("enabled", True) is False or not isinstance(cap, int):
                continue
            key = (entitlement.account_id, feature.product_id, feature.key)
            held = caps.get(key, (0, feature.period))[0]
            caps[key] = (held + cap * int(devices), feature.period)
    return caps


def check_thresholds(
    session: Session, tenant_id: str, now: datetime, thresholds: Sequence[int]
) -> int:
    """Log ``usage.threshold_reached`` for every newly reached threshold; returns how many."""
    caps = account_caps(session, tenant_id, now)
    emitted = 0
    for kind in sorted({period for _, period in caps.values()}):
        start, end = cap_period(kind, now)
        totals = usage_totals(
            session, tenant_id=tenant_id, start=start, end=end,
            group_by=("account_id", "product_id", "meter"), covered=True,
        )  # fmt: skip
        for total in totals:
            key = (str(total.keys["account_id"]), str(total.keys["product_id"]),
                   str(total.keys["meter"]))  # fmt: skip
            cap, period = caps.get(key, (0, ""))
            if period != kind or cap <= 0:
                continue
            for percent in thresholds:
                if total.value * 100 >= Decimal(cap) * percent:
                    crossing = _Crossing(key, kind, start, end, cap, total.value, percent)
                    emitted += _threshold_event(session, tenant_id, crossing, now)
    return emitted


@dataclass(frozen=True, slots=True)
class _Crossing:
    key: CapKey
    kind: str
    start: datetime
    end: datetime
    cap: int
    usage: Decimal
    percent: int


def _threshold_event(session: Session, tenant_id: str, crossing: _Crossing, now: datetime) -> int:
    account_id, product_id, meter = crossing.key
    start, percent = crossing.start.isoformat(), crossing.percent
    event = events.emit(
        session, tenant_id=tenant_id, event_type="usage.threshold_reached",
        dedup_key=f"usage.threshold:{account_id}:{product_id}:{meter}:{start}:{percent}",
        payload={"account_id": account_id, "product_id": product_id, "meter": meter,
                 "period": crossing.kind, "period_start": start,
                 "period_end": crossing.end.isoformat(), "cap": crossing.cap,
                 "usage": decimal_text(crossing.usage), "threshold_percent": percent},
        now=now,
    )  # fmt: skip
    return 0 if event is None else 1


def check_expiring(session: Session, tenant_id: str, now: datetime, lead: timedelta) -> int:
    """Log ``entitlement.expiring`` for active entitlements ending within ``lead``."""
    rows = session.scalars(
        select(Entitlement).where(
            Entitlement.tenant_id == tenant_id,
            Entitlement.status == "active",
            Entitlement.ends_at.is_not(None),
            Entitlement.ends_at > now,
            Entitlement.ends_at <= now + lead,
        )
    )
    emitted = 0
    for entitlement in rows:
        ends_at = entitlement.ends_at
        assert ends_at is not None
        event = events.emit(
            session, tenant_id=tenant_id, event_type="entitlement.expiring",
            dedup_key=f"entitlement.expiring:{entitlement.id}:{ends_at.isoformat()}",
            payload={"entitlement_id": entitlement.id, "account_id": entitlement.account_id,
                     "product_id": entitlement.product_id,
                     "license_model": entitlement.license_model,
                     "ends_at": ends_at.isoformat(),
                     "grace_seconds": entitlement.grace_seconds,
                     "seconds_left": int((ends_at - now).total_seconds())},
            now=now,
        )  # fmt: skip
        emitted += 0 if event is None else 1
    return emitted
