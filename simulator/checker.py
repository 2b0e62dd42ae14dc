"""The invariant checker: the devices' ground truth against the hub's final account.

In the manner of Jepsen's queue checker, usage is an ordered set of operations
with three outcomes that must each be empty:

- **lost**: a record the hub acknowledged as held (``stored``, ``duplicate``
  or ``conflict``) that the hub's usage store does not hold;
- **duplicated**: a record key the hub holds more than once;
- **unexpected**: a record the hub holds under a device that never sent it
  (for instance one forged on another device's topic).

Beside usage: every device converged to the hub's latest manifest sequence;
no feature used past its lease (plus the device's declared clock skew and one
tick), nor after a revocation plus one lease; no device ever received
traffic from outside its own topic subtree or planted by another device; no
replayed manifest rolled a device back; the hub still answers; firmware and
rollouts consistent (when the hub and the agent have them).

:func:`check` is pure: it takes the recorded run and the hub's state (fetched
by :mod:`simulator.hubstate`) and returns figures and violations.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from simulator.recorder import BILLABLE_CODES, DeviceRecord, UsageKey

TICK_TOLERANCE = 2.0
"""Seconds a feature check may lag the lease end (checks happen once per tick)."""


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken invariant."""

    kind: str
    device: str | None
    detail: str

    def to_json(self) -> dict[str, Any]:
        """The report's form."""
        return {"kind": self.kind, "device": self.device, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class HubDevice:
    """A device as the hub sees it at the end."""

    device_id: str
    serial: str
    status: str
    manifest_seq: int | None  # None: no manifest was ever issued
    online: bool = False


@dataclass(frozen=True, slots=True)
class HubState:
    """The hub's final account, fetched over REST.

    Attributes:
        devices: By device id.
        usage_records: Each device's held usage keys, with repeats if the hub
            holds any key twice; ``None`` when the hub has no usage API.
        rollouts: The hub's rollouts; ``None`` when it has none.
        alive: Whether the hub answered at the end.
    """

    devices: Mapping[str, HubDevice]
    usage_records: Mapping[str, list[UsageKey]] | None = None
    rollouts: list[Mapping[str, Any]] | None = None
    alive: bool = True


@dataclass(frozen=True, slots=True)
class RunFacts:
    """What the run did that the checker needs: lease length, revocations, skips."""

    lease_seconds: int
    revoked_at: Mapping[str, float] = field(default_factory=dict)  # group -> real time
    metering_available: bool = False
    firmware_available: bool = False


@dataclass
class UsageFigures:
    """Usage counted over the whole fleet."""

    generated: int = 0
    sent: int = 0
    acknowledged: int = 0
    billed: int = 0
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    unacknowledged: int = 0
    resent: int = 0
    codes: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The report's ``usage`` object."""
        return {
            "generated": self.generated,
            "sent": self.sent,
            "acknowledged": self.acknowledged,
            "billed": self.billed,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "unexpected": self.unexpected,
            "unacknowledged": self.unacknowledged,
            "resent": self.resent,
            "ack_codes": dict(sorted(self.codes.items())),
        }


@dataclass
class CheckResult:
    """Figures and violations of one run."""

    devices: int
    usage: UsageFigures
    converged: int
    violations: list[Violation]
    skipped: list[str]

    @property
    def ok(self) -> bool:
        """No invariant was violated."""
        return not self.violations


def check(records: Mapping[str, DeviceRecord], hub: HubState, facts: RunFacts) -> CheckResult:
    """Every invariant over the recorded run and the hub's final state."""
    violations: list[Violation] = []
    skipped: list[str] = []
    if not hub.alive:
        violations.append(Violation("hub_down", None, "the hub did not answer at the end"))
    usage = _check_usage(records, hub, violations)
    if hub.usage_records is None:
        skipped.append("usage: the hub has no usage API yet (lost/duplicated/unexpected unchecked)")
    if not facts.metering_available:
        skipped.append(
            "usage: no device ran a metering component (not configured, or the agent has none)"
        )
    converged = sum(_check_manifest(r, hub, violations) for r in records.values())
    for record in records.values():
        _check_features(record, facts, violations)
        _check_isolation(record, violations)
    _check_rollouts(hub, violations, skipped)
    if not facts.firmware_available:
        skipped.append("firmware: no device ran a firmware component (installs unchecked)")
    return CheckResult(
        devices=len(records),
        usage=usage,
        converged=converged,
        violations=violations,
        skipped=skipped,
    )


def _check_usage(
    records: Mapping[str, DeviceRecord], hub: HubState, violations: list[Violation]
) -> UsageFigures:
    figures = UsageFigures()
    for record in records.values():
        figures.generated += record.usage_generated
        figures.sent += len(record.usage_sent)
        figures.resent += record.usage_resends
        figures.acknowledged += len(record.usage_acks)
        for code in record.usage_acks.values():
            figures.codes[code] = figures.codes.get(code, 0) + 1
        figures.unacknowledged += len(set(record.usage_sent) - set(record.usage_acks))
        if hub.usage_records is None or not record.device_id:
            continue
        held = hub.usage_records.get(record.device_id, [])
        _usage_of_device(record, held, figures, violations)
    if hub.usage_records is not None:
        known = {r.device_id for r in records.values()}
        for device_id, held in hub.usage_records.items():
            if device_id not in known and held:
                figures.unexpected += len(held)
                violations.append(
                    Violation(
                        "usage_unexpected",
                        device_id,
                        f"{len(held)} record(s) billed to a device the simulator does not run",
                    )
                )
    return figures


def _usage_of_device(
    record: DeviceRecord,
    held: list[UsageKey],
    figures: UsageFigures,
    violations: list[Violation],
) -> None:
    counts = Counter(held)
    figures.billed += len(held)
    acked = {k for k, code in record.usage_acks.items() if code in BILLABLE_CODES}
    lost = sorted(acked - set(counts))
    duplicated = sorted(k for k, n in counts.items() if n > 1)
    unexpected = sorted(set(counts) - set(record.usage_sent))
    figures.lost += len(lost)
    figures.duplicated += sum(counts[k] - 1 for k in duplicated)
    figures.unexpected += sum(counts[k] for k in unexpected)
    for kind, keys in (
        ("usage_lost", lost),
        ("usage_duplicated", duplicated),
        ("usage_unexpected", unexpected),
    ):
        if keys:
            shown = ", ".join(f"{e}/{s}" for e, s in keys[:5])
            more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
            violations.append(
                Violation(
                    kind,
                    record.device_id,
                    f"{len(keys)} record key(s) boot_epoch/seq: {shown}{more}",
                )
            )


def _check_manifest(record: DeviceRecord, hub: HubState, violations: list[Violation]) -> bool:
    if not record.device_id:
        violations.append(Violation("not_claimed", record.serial, "never claimed an identity"))
        return False
    device = hub.devices.get(record.device_id)
    if device is None:
        violations.append(
            Violation("unknown_to_hub", record.device_id, "the hub lists no such device")
        )
        return False
    expected = device.manifest_seq or 0
    if record.manifest_seq == expected:
        return True
    violations.append(
        Violation(
            "stale_manifest",
            record.device_id,
            f"{record.serial} holds manifest seq {record.manifest_seq},"
            f" the hub's latest is {expected}"
            f" ({record.connects} connects, {record.crashes} crashes)",
        )
    )
    return False


def grace_of(record: DeviceRecord) -> float:
    """How far past a lease a check may find a feature: clock lag plus one tick."""
    return max(0, -record.clock_skew) + TICK_TOLERANCE


def _check_features(record: DeviceRecord, facts: RunFacts, violations: list[Violation]) -> None:
    grace = grace_of(record)
    revoked = facts.revoked_at.get(record.group)
    for feature, seen in record.features.items():
        if seen.worst_overrun > grace:
            what = (
                "with no manifest at all"
                if seen.worst_overrun == float("inf")
                else f"{seen.worst_overrun:.1f}s past the lease of manifest {seen.worst_seq}"
            )
            violations.append(
                Violation(
                    "feature_past_lease",
                    record.device_id or record.serial,
                    f"{feature} enabled {what} (grace {grace:.0f}s)",
                )
            )
        if revoked is not None and seen.last_enabled_at > revoked + facts.lease_seconds + grace:
            late = seen.last_enabled_at - revoked
            violations.append(
                Violation(
                    "feature_after_revocation",
                    record.device_id or record.serial,
                    f"{feature} enabled {late:.0f}s after the revocation"
                    f" (lease {facts.lease_seconds}s)",
                )
            )


def _check_isolation(record: DeviceRecord, violations: list[Violation]) -> None:
    if record.foreign_received:
        shown = ", ".join(sorted(set(record.foreign_received))[:5])
        violations.append(
            Violation(
                "isolation_breach",
                record.device_id or record.serial,
                f"received {len(record.foreign_received)} message(s) it must never see: {shown}",
            )
        )
    if record.errors.get("manifest_regressed"):
        violations.append(
            Violation(
                "manifest_rollback",
                record.device_id,
                "a replayed old manifest was accepted",
            )
        )


_FINAL_ROLLOUT_STATES = frozenset({"draft", "completed", "aborted", "cancelled", "paused"})
"""A rollout still ``running`` once faults stopped and the fleet settled is not final."""


def _check_rollouts(hub: HubState, violations: list[Violation], skipped: list[str]) -> None:
    if hub.rollouts is None:
        skipped.append("rollouts: the hub has no rollout API yet")
        return
    for rollout in hub.rollouts:
        state = str(rollout.get("state") or rollout.get("status") or "")
        if state not in _FINAL_ROLLOUT_STATES:
            violations.append(
                Violation(
                    "rollout_unsettled",
                    str(rollout.get("id")),
                    f"rollout ended in state {state!r}",
                )
            )
