"""The entitlement gate: may a device receive a package? Evaluated at "now".

A package may require a product (``required_product_id``) and optionally one
feature of it (``required_feature``). A device passes when one of its
activations of that product is in force at ``now`` (the rules of
:mod:`hub.entitlements.effective`: status, term, grace, rehost, seat) and, with
a feature, when those grants enable the feature. A package without a
requirement is open to every device of its class.

The gate is checked when a rollout picks its targets, before every offer,
on every chunk request and on every HTTP range request, so a device that
loses its entitlement mid-rollout is refused from then on. The MQTT chunk
path remembers a device's pass for a job for a short time (:class:`PassCache`,
one second by default): a lost entitlement is refused from the first chunk
request evaluated after that.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

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


class PassCache:
    """Recent gate *passes* per (device, job), each trusted for ``ttl`` after its evaluation.

    The MQTT chunk path checks the gate on every request; evaluating it loads
    the device's grants (a few queries per call). A pass is remembered for
    ``ttl`` (measured on the ``now`` the caller passes in), so a device that
    loses its entitlement is refused from its first request evaluated more
    than ``ttl`` after its last evaluated pass. Refusals are never cached, and
    ``ttl`` zero disables the cache. Bounded: when full, expired entries go,
    and if that is not enough, the oldest passes. Thread-safe.
    """

    def __init__(self, ttl: timedelta, max_entries: int = 100_000) -> None:
        if ttl < timedelta(0) or max_entries < 1:
            raise ValueError("ttl must not be negative and max_entries must be positive")
        self.ttl = ttl
        self._max_entries = max_entries
        self._passed: dict[tuple[str, str], datetime] = {}
        self._lock = threading.Lock()

    def passed(self, device_id: str, job_id: str, now: datetime) -> bool:
        """Whether a pass for (``device_id``, ``job_id``) was noted less than ``ttl`` ago."""
        with self._lock:
            at = self._passed.get((device_id, job_id))
        return at is not None and at <= now < at + self.ttl

    def note(self, device_id: str, job_id: str, now: datetime) -> None:
        """Remember that the device passed the gate of ``job_id``'s package at ``now``."""
        if not self.ttl:
            return
        with self._lock:
            self._passed.pop((device_id, job_id), None)  # keep insertion order = note order
            if len(self._passed) >= self._max_entries:
                self._passed = {k: at for k, at in self._passed.items() if at + self.ttl > now}
                # Still full: the oldest passes go, not all (a pass trusted a moment
                # ago must not vanish in the middle of the call that relies on it).
                for key in list(self._passed)[: len(self._passed) - self._max_entries + 1]:
                    del self._passed[key]
            self._passed[(device_id, job_id)] = now
