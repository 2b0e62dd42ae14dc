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
replayed manifest rolled a device back; the hub still answers; every device
runs its original image or one the hub signed and it was entitled to, and
every rollout ended consistent with what the devices run
(:mod:`simulator.fwcheck`).

:func:`check` is pure: it takes the recorded run and the hub's state (fetched
by :mod:`simulator.hubstate`) and returns figures and violations.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from simulator.fwcheck import FirmwareFigures, HubRollout, IssuedImage, check_firmware
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
    manifest_issued_at: float | None = None  # Unix seconds


@dataclass(frozen=True, slots=True)
class HubState:
    """The hub's final account, fetched over REST.

    Attributes:
        devices: By device id.
        usage_records: Each device's held usage keys, with repeats if the hub
            holds any key twice; ``None`` when the hub has no usage API.
        rollouts: The run's rollouts with their jobs; ``None`` when the hub
            has no rollout API.
        images: The firmware packages of the run's device class, each with
            the image digest its signed envelope names.
        alive: Whether the hub answered at the end.
        fetched_at: When this account was fetched (Unix seconds): job
            deadlines are judged against it.
    """

    devices: Mapping[str, HubDevice]
    usage_records: Mapping[str, list[UsageKey]] | None = None
    rollouts: list[HubRollout] | None = None
    alive: bool = True
    images: list[IssuedImage] = field(default_factory=list)
    fetched_at: float = 0.0


@dataclass(frozen=True, slots=True)
class RunFacts:
    """What the run did that the checker needs: lease length, revocations, skips."""

    lease_seconds: int
    revoked_at: Mapping[str, float] = field(default_factory=dict)  # group -> real time
    metering_available: bool = False
    firmware_available: bool = False
    rollout_planned: bool = False  # the scenario plans a rollout
    rollout_started: bool = False
    # device id -> the hub's manifest sequence the settle check that succeeded saw
    settled_seqs: Mapping[str, int] = field(default_factory=dict)
    hub_problems: tuple[str, ...] = ()  # e.g. the hub ignored SIGTERM during a fault
    rollout_error: str = ""  # the scenario's rollout could not be started


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
    firmware: FirmwareFigures = field(default_factory=FirmwareFigures)

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
    violations.extend(Violation("hub_stop_hung", None, p) for p in facts.hub_problems)
    usage = _check_usage(records, hub, violations)
    if hub.usage_records is None:
        skipped.append("usage: the hub has no usage API yet (lost/duplicated/unexpected unchecked)")
    if not facts.metering_available:
        skipped.append(
            "usage: no device ran a metering component (not configured, or the agent has none)"
        )
    converged = sum(_check_manifest(r, hub, facts, violations) for r in records.values())
    for record in records.values():
        _check_features(record, facts, violations)
        _check_isolation(record, violations)
    firmware = _check_firmware(records, hub, facts, violations, skipped)
    return CheckResult(
        devices=len(records),
        usage=usage,
        converged=converged,
        violations=violations,
        skipped=skipped,
        firmware=firmware,
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


def _check_manifest(
    record: DeviceRecord, hub: HubState, facts: RunFacts, violations: list[Violation]
) -> bool:
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
    if record.manifest_seq == expected or _issued_after_stop(record, device, facts):
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


def _issued_after_stop(record: DeviceRecord, device: HubDevice, facts: RunFacts) -> bool:
    """The device missed only a manifest the hub signed once the device was going away.

    After the settle check saw every device converged, devices stay connected
    (the demo waits out a billing grace period with them online), so any
    manifest issued then must reach them. Only one issued after this device's
    own stop began (a lease renewal that fell due, a re-issue after its
    goodbye) has nobody to reach; the device gets it on its next hello. So a
    device is excused only if it still holds exactly the sequence the
    successful settle check saw for it, the hub's latest is higher, and the
    hub issued that latest one after the device's stop began. Never a device
    ahead of the hub, nor one without a successful settle check.
    """
    seen = facts.settled_seqs.get(record.device_id)
    latest = device.manifest_seq or 0
    issued, stopped = device.manifest_issued_at, record.stopped_at
    return (
        seen is not None
        and record.manifest_seq == seen < latest
        and issued is not None
        and stopped is not None
        and issued >= stopped
    )


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


def _check_firmware(
    records: Mapping[str, DeviceRecord],
    hub: HubState,
    facts: RunFacts,
    violations: list[Violation],
    skipped: list[str],
) -> FirmwareFigures:
    if facts.rollout_error:
        violations.append(Violation("rollout_not_started", None, facts.rollout_error))
    elif facts.rollout_planned and not facts.rollout_started:
        violations.append(
            Violation("rollout_not_started", None, "the scenario planned a rollout; none started")
        )
    if not facts.firmware_available:
        skipped.append("firmware: no device ran a firmware component (installs unchecked)")
    elif not facts.rollout_started:
        skipped.append("firmware: the scenario started no rollout (installs unchecked)")
    if hub.rollouts is None:
        skipped.append("rollouts: the hub has no rollout API")
        return FirmwareFigures()
    figures, findings = check_firmware(
        records.values(), hub.rollouts, hub.images, now=hub.fetched_at
    )
    violations.extend(Violation(kind, who, detail) for kind, who, detail in findings)
    return figures
