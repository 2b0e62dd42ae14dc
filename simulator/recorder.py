"""Ground truth: what each simulated device sent, was acknowledged and enabled, and when.

The recorder watches the wire at the device's edge (every publish it makes and
every message it receives) and what the device application saw (feature
checks through the real :class:`device_agent.features.Features`). It never
asks the hub: the checker compares this record with the hub's own account.

Memory matters at 10,000 devices, so feature checks are folded into a few
numbers per device and feature (the worst lease overrun, the last time seen
enabled) instead of a log of every check.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from protocols import cose, suit, topics
from protocols.errors import ProtocolError
from protocols.firmware_messages import FirmwareOffer
from protocols.messages import decode_message

log = logging.getLogger(__name__)

UsageKey = tuple[int, int]
"""A usage record's idempotency key within its device: ``(boot_epoch, seq)``."""

BILLABLE_CODES = frozenset({"stored", "duplicate", "conflict"})
"""Ack codes after which the hub holds (and bills) the key's first content."""


@dataclass(frozen=True, slots=True)
class FirmwareScope:
    """Which firmware is the run's, and the key its envelopes must verify under."""

    class_id: str
    vendor_uuid: str
    class_uuid: str
    keys: Sequence[cose.CoseKey]


def envelope_image(envelope: bytes, scope: FirmwareScope) -> str:
    """The image digest (hex) a SUIT envelope names, if it verifies under ``scope``; else ``""``.

    Only a verified envelope is the hub's word: an unsigned one names nothing.
    """
    try:
        manifest, _ = suit.verify_envelope(
            envelope,
            scope.keys,
            expected_vendor=scope.vendor_uuid,
            expected_class=scope.class_uuid,
            state=suit.SuitState(),
        )
    except ProtocolError as exc:
        log.warning("an envelope does not verify under the hub's firmware anchor: %s", exc)
        return ""
    return manifest.image_digest.hex() if manifest.image_digest else ""


@dataclass(slots=True)
class FeatureSeen:
    """How one device saw one feature over the run.

    Attributes:
        last_enabled_at: Real time of the last check that found it enabled.
        worst_overrun: The largest ``real time - not_after`` of a check that
            found it enabled (negative: always inside the lease).
        worst_seq: The manifest sequence held at that check.
    """

    last_enabled_at: float = 0.0
    worst_overrun: float = float("-inf")
    worst_seq: int = 0


@dataclass(slots=True)
class DeviceRecord:
    """Everything recorded about one simulated device."""

    serial: str
    group: str
    clock_skew: int = 0
    malicious: tuple[str, ...] = ()
    device_id: str = ""
    claimed_at: float | None = None
    connects: int = 0
    connection_losses: int = 0
    crashes: int = 0
    boot_epochs: int = 0
    manifest_seq: int = 0
    manifests_accepted: int = 0
    manifests_rejected: int = 0
    usage_generated: int = 0
    usage_sent: dict[UsageKey, tuple[Any, ...]] = field(default_factory=dict)
    usage_resends: int = 0
    usage_acks: dict[UsageKey, str] = field(default_factory=dict)
    usage_buffered_at_end: int | None = None
    features: dict[str, FeatureSeen] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    foreign_received: list[str] = field(default_factory=list)
    attacks: dict[str, int] = field(default_factory=dict)
    firmware_entitled: bool = True  # its group holds the gated package's entitlement
    firmware_original: str = ""  # hex SHA-256 of the image it was built with
    firmware_running: str = ""  # hex SHA-256 of the image it runs at the end ('' unknown)
    firmware_unreadable: str = ""  # why its running image could not be read at the end
    firmware_offers: dict[str, float] = field(default_factory=dict)  # job id -> first seen
    # job id -> image digest its offer's envelope names, verified ('' did not verify)
    firmware_offer_images: dict[str, str] = field(default_factory=dict)
    stopped_at: float | None = None  # real time its stop (goodbye, disconnect) began


class Recorder:
    """The ground truth of one run, device by device (keyed by serial)."""

    def __init__(self) -> None:
        self.devices: dict[str, DeviceRecord] = {}
        self.planted: dict[str, str] = {}  # payload digest -> the attacker's serial
        self.events: list[tuple[float, str]] = []
        self.firmware_scope: FirmwareScope | None = None  # set once the hub's anchor is known
        self._envelopes: dict[str, str] = {}  # envelope digest -> image digest it names

    def add(self, serial: str, group: str, skew: int, malicious: tuple[str, ...]) -> DeviceRecord:
        """Register a device before it starts."""
        record = DeviceRecord(serial=serial, group=group, clock_skew=skew, malicious=malicious)
        self.devices[serial] = record
        return record

    def event(self, at: float, text: str) -> None:
        """A fleet-level event (fault, action, phase) for the report."""
        self.events.append((round(at, 3), text))

    def plant(self, serial: str, payload: bytes) -> None:
        """Remember a payload an attacker aimed at someone else's topic."""
        self.planted[_digest(payload)] = serial

    def sent(self, record: DeviceRecord, topic: str, payload: bytes) -> None:
        """A publish the device makes, noted as it is handed to the transport.

        Not after the broker's acknowledgement: a publish cut short by a
        dropped link may still have reached the broker and been stored.
        """
        if not topic.endswith("/up/usage"):
            return
        try:
            message = decode_message(payload)
        except ProtocolError:
            return
        for raw in getattr(message, "records", ()) or ():
            key = (int(raw[0]), int(raw[1]))
            if key in record.usage_sent:
                record.usage_resends += 1
            else:
                record.usage_sent[key] = tuple(raw[2:])

    def received(self, record: DeviceRecord, topic: str, payload: bytes) -> None:
        """A message the device received: acks are noted, foreign traffic is a breach."""
        planter = self.planted.get(_digest(payload))
        if not _own_topic(record.device_id, topic) or planter not in (None, record.serial):
            record.foreign_received.append(topic)
            return
        if topic.endswith("/down/firmware"):
            self._firmware(record, payload)
            return
        if not topic.endswith("/down/usage_ack") and not topic.endswith("/down/error"):
            return
        try:
            message = decode_message(payload)
        except ProtocolError:
            return
        if getattr(message, "TYPE", "") == "error":
            code = str(getattr(message, "code", "error"))
            record.errors[code] = record.errors.get(code, 0) + 1
            return
        for result in getattr(message, "results", ()) or ():
            record.usage_acks[(int(result[0]), int(result[1]))] = str(result[2])

    def _firmware(self, record: DeviceRecord, payload: bytes) -> None:
        try:
            message = decode_message(payload)
        except ProtocolError:
            return
        if isinstance(message, FirmwareOffer):
            record.firmware_offers.setdefault(message.job_id, time.time())
            record.firmware_offer_images.setdefault(
                message.job_id, self._offered_image(message.envelope)
            )

    def _offered_image(self, envelope: bytes) -> str:
        """The image an offer's envelope names (verified once per distinct envelope)."""
        if self.firmware_scope is None:
            return ""
        key = _digest(envelope)
        if key not in self._envelopes:
            self._envelopes[key] = envelope_image(envelope, self.firmware_scope)
        return self._envelopes[key]

    def feature_check(
        self,
        record: DeviceRecord,
        *,
        feature: str,
        enabled: bool,
        real_now: float,
        not_after: int | None,
        seq: int,
    ) -> None:
        """One check of a feature by the device application."""
        if not enabled:
            record.features.setdefault(feature, FeatureSeen())
            return
        seen = record.features.setdefault(feature, FeatureSeen())
        seen.last_enabled_at = real_now
        overrun = real_now - (not_after if not_after is not None else float("-inf"))
        if not_after is None:
            overrun = float("inf")  # enabled without any manifest: always a violation
        if overrun > seen.worst_overrun:
            seen.worst_overrun, seen.worst_seq = overrun, seq


def _digest(payload: bytes) -> str:
    return hashlib.blake2b(payload, digest_size=16).hexdigest()


def _own_topic(device_id: str, topic: str) -> bool:
    try:
        parsed = topics.parse(topic)
    except ProtocolError:
        return False
    return isinstance(parsed, topics.DeviceTopic) and parsed.device_id == device_id
