"""The agent's SUIT processor: a pure trust step for firmware offers and chunks.

Bytes in, a verified object out, or a typed error (python-tuf style); no IO,
no clock. An offer is checked in this order, every step before any payload
byte is requested:

1. the envelope (``protocols.suit.verify_envelope``): size cap, structure,
   manifest digest, COSE_Sign1 under one of the device's ``firmware``
   anchors, manifest contents, then the device's vendor and class ids, then
   anti-rollback against the highest sequence number accepted so far;
2. installability: one component, an image digest and a positive size, the
   chunk-digest extension, and a chunk size equal to the offer's.

Every chunk is then checked on arrival against its digest in the signed
manifest (:func:`check_chunk`, :func:`split_range`) before it is written.
Refusals raise :class:`~device_agent.firmware.errors.OfferRefused` or a
:class:`~device_agent.firmware.errors.ChunkRefused` subclass whose ``code``
names the cause (``suit_wrong_device``, ``suit_rollback``, ...).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from device_agent.firmware.errors import (
    ChunkCorrupt,
    ChunkOutOfRange,
    ChunkSize,
    ForeignJob,
    OfferRefused,
)
from device_agent.firmware.install import Target
from device_agent.trust import ROLE_FIRMWARE, TrustedState, role_keys
from protocols import cose, suit
from protocols.errors import ProtocolError
from protocols.firmware_messages import FirmwareChunk, FirmwareOffer


@dataclass(frozen=True, slots=True)
class DeviceClass:
    """The vendor and class ids this device accepts firmware for (RFC 4122 strings)."""

    vendor_id: str
    class_id: str


@dataclass(frozen=True, slots=True)
class VerifiedOffer:
    """An offer whose envelope verified and whose image this device can install.

    Attributes:
        job_id: The hub's install job.
        manifest: The verified SUIT manifest (chunk digests included).
        envelope: The signed envelope, kept to re-verify after a restart.
        chunk_size: Bytes per chunk (equals the manifest's chunk parameter).
        http_path: Path of the ranged HTTP download on the hub's API, if offered.
    """

    job_id: str
    manifest: suit.SuitManifest
    envelope: bytes
    chunk_size: int
    http_path: str | None = None

    @property
    def target(self) -> Target:
        """The install core's view of the image."""
        assert self.manifest.image_digest is not None and self.manifest.image_size is not None
        return Target(
            job_id=self.job_id,
            sequence=self.manifest.sequence,
            digest=self.manifest.image_digest,
            size=self.manifest.image_size,
        )

    @property
    def chunk_count(self) -> int:
        """Number of chunks of the image."""
        return self.manifest.chunk_count


def firmware_keys(state: TrustedState) -> list[cose.CoseKey]:
    """The device's usable, unretired ``firmware`` trust anchors as COSE keys."""
    return role_keys(state, ROLE_FIRMWARE)


def verify_envelope(
    envelope: bytes,
    keys: Iterable[cose.CoseKey],
    *,
    device: DeviceClass,
    state: suit.SuitState,
) -> suit.SuitManifest:
    """Verify an envelope for this device (signature, vendor, class, anti-rollback).

    Returns:
        The verified manifest. The caller advances the anti-rollback state only
        once the image is confirmed.

    Raises:
        OfferRefused: with the SUIT or COSE error's code (``suit_wrong_device``,
            ``suit_rollback``, ``suit_already_installed``, ``signature_invalid``,
            ``unknown_key``, ``suit_malformed``, ``payload_too_large``, ...).
    """
    try:
        manifest, _ = suit.verify_envelope(
            envelope,
            keys,
            expected_vendor=device.vendor_id,
            expected_class=device.class_id,
            state=state,
        )
    except ProtocolError as exc:
        raise OfferRefused(str(exc), code=exc.code) from exc
    return manifest


def check_installable(manifest: suit.SuitManifest, chunk_size: int) -> None:
    """Refuse a verified manifest the A/B installer cannot act on.

    Raises:
        OfferRefused: code ``unsupported_manifest`` (several components, no
            image digest or size, no chunk digests) or ``chunk_size_mismatch``.
    """
    if len(manifest.components) != 1:
        raise OfferRefused(
            f"{len(manifest.components)} components: only single-image manifests are installed",
            code="unsupported_manifest",
        )
    if manifest.image_digest is None or not manifest.image_size:
        raise OfferRefused(
            "the manifest declares no image digest and size", code="unsupported_manifest"
        )
    if not manifest.chunk_digests or manifest.chunk_size is None:
        raise OfferRefused("the manifest declares no chunk digests", code="unsupported_manifest")
    if manifest.chunk_size != chunk_size:
        raise OfferRefused(
            f"the offer's chunk size {chunk_size} differs from the manifest's "
            f"{manifest.chunk_size}",
            code="chunk_size_mismatch",
        )


def verify_offer(
    offer: FirmwareOffer,
    keys: Iterable[cose.CoseKey],
    *,
    device: DeviceClass,
    state: suit.SuitState,
) -> VerifiedOffer:
    """Verify an offer end to end before any byte of its payload is requested.

    Raises:
        OfferRefused: see :func:`verify_envelope` and :func:`check_installable`.
    """
    manifest = verify_envelope(offer.envelope, keys, device=device, state=state)
    check_installable(manifest, offer.chunk_size)
    return VerifiedOffer(
        job_id=offer.job_id,
        manifest=manifest,
        envelope=offer.envelope,
        chunk_size=offer.chunk_size,
        http_path=offer.http_path,
    )


def _verify_chunk(manifest: suit.SuitManifest, index: int, data: bytes) -> None:
    try:
        suit.verify_chunk(manifest, index, data)
    except suit.SuitChunkOutOfRange as exc:
        raise ChunkOutOfRange(str(exc)) from exc
    except suit.SuitChunkSize as exc:
        raise ChunkSize(str(exc)) from exc
    except suit.SuitChunkMismatch as exc:
        raise ChunkCorrupt(str(exc)) from exc


def check_chunk(offer: VerifiedOffer, chunk: FirmwareChunk) -> None:
    """Check one arriving chunk against the job and its signed digest.

    Raises:
        ForeignJob: the chunk names another job.
        ChunkOutOfRange: its index is outside the image.
        ChunkSize: it is oversize or truncated for its index.
        ChunkCorrupt: its digest differs.
    """
    if chunk.job_id != offer.job_id:
        raise ForeignJob(f"chunk {chunk.index} is for job {chunk.job_id}, not {offer.job_id}")
    _verify_chunk(offer.manifest, chunk.index, chunk.data)


def range_bounds(manifest: suit.SuitManifest, index: int, count: int) -> tuple[int, int]:
    """The byte range ``(first, last)`` (inclusive) of chunks ``index .. index+count-1``.

    Raises:
        ChunkOutOfRange: ``index`` is outside the image or ``count`` < 1.
    """
    if count < 1 or not 0 <= index < manifest.chunk_count or manifest.chunk_size is None:
        raise ChunkOutOfRange(f"chunks {index}+{count} are outside the image")
    assert manifest.image_size is not None
    last = min(manifest.image_size, (index + count) * manifest.chunk_size) - 1
    return index * manifest.chunk_size, last


def split_range(
    manifest: suit.SuitManifest, index: int, count: int, body: bytes
) -> list[tuple[int, bytes]]:
    """Split a ranged download into chunks and verify each against its digest.

    Returns:
        ``(index, data)`` for every chunk of the range, all verified.

    Raises:
        ChunkOutOfRange: the range is outside the image.
        ChunkSize: the body is longer (a payload larger than declared) or
            shorter than the range.
        ChunkCorrupt: a chunk does not match its digest.
    """
    first, last = range_bounds(manifest, index, count)
    expected = last - first + 1
    if len(body) != expected:
        relation = "larger than declared" if len(body) > expected else "truncated"
        raise ChunkSize(f"range {first}-{last}: {len(body)} bytes, {relation} ({expected})")
    assert manifest.chunk_size is not None
    size = manifest.chunk_size
    chunks = []
    for offset in range(0, expected, size):
        number = index + offset // size
        data = body[offset : offset + size]
        _verify_chunk(manifest, number, data)
        chunks.append((number, data))
    return chunks


__all__ = [
    "DeviceClass",
    "VerifiedOffer",
    "check_chunk",
    "check_installable",
    "firmware_keys",
    "range_bounds",
    "split_range",
    "verify_envelope",
    "verify_offer",
]
