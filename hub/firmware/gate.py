"""The entitlement gate: may a device receive a package? Evaluated at "now".

A package may require a product (``required_product_id``) and optionally one
feature of it (``required_feature``). A device passes when one of its
activations of that product is in force at ``now`` (the rules of
:mod:`hub.entitlements.effective`: status, term, grace, rehost, seat) and, with
a feature, when those grants enable the feature. A package without a
requirement is open to every device of its class.

The gate is checked when a rollout picks its targets, before every offer,
on every chunk request and on every HTTP range request, so a device that
loses its entitlement mid-rollout is refused from then on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from hub.entitlements.effective import effective_features, in_force
from hub.entitlements.grants import DeviceGrants, load_grants_for_devices
from hub.firmware.models import FirmwarePackage


@dataclass(frozen=True, slots=True)
class Gate:
    """A package's requirement; both ``None`` means open."""

    product_id: str | None = None
    feature: str | None = None

    @classmethod
    def of(cls, package: FirmwarePackage) -> Gate:
        """The gate of ``package``."""
        return cls(package.required_product_id, package.required_feature)

    @property
    def is_open(self) -> bool:
        """Whether every device passes."""
        return self.product_id is None


def passes(loaded: DeviceGrants, gate: Gate, now: datetime) -> bool:
    """Whether the device whose grants are ``loaded`` passes ``gate`` at ``now``. Pure."""
    if gate.product_id is None:
        return True
    grants = [
        g for ent, g in loaded.pairs if ent.product_id == gate.product_id and in_force(g, now)
    ]
    if not grants:
        return False
    if gate.feature is None:
        return True
    definition = loaded.catalog.get(gate.feature)
    if definition is None:
        return False
    features = effective_features(grants, {gate.feature: definition}, now=now)
    return features[gate.feature].enabled


def entitled_devices(
    session: Session, device_ids: Iterable[str], gate: Gate, now: datetime
) -> set[str]:
    """Which of ``device_ids`` pass ``gate`` at ``now`` (a few queries per 900 devices)."""
    ids = sorted(set(device_ids))
    if gate.is_open:
        return set(ids)
    loaded = load_grants_for_devices(session, ids)
    return {device_id for device_id in ids if passes(loaded[device_id], gate, now)}
