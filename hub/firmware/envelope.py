"""SUIT envelopes of catalogue packages: chunk size choice, building, inspection keys.

The hub builds one envelope per package at upload with
:func:`protocols.suit.build_envelope`, signed by the firmware catalogue key
(``HubKeys.firmware``, not the manifest key). The envelope must fit a
``fw_offer`` (:data:`protocols.firmware_messages.MAX_ENVELOPE`, 32 KiB) and each
chunk a ``fw_chunk`` within the broker's payload cap, which bounds the chunk
size from above and the number of chunks (34 bytes of digest each).
"""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from hub.firmware.errors import InvalidChunkSize, PackageTooLarge
from protocols import suit
from protocols.cose import CoseKey
from protocols.errors import CoseError
from protocols.firmware_messages import MAX_CHUNK_SIZE, MAX_ENVELOPE, MIN_CHUNK_SIZE
from provisioning.signer import Signer, key_id_for

DEFAULT_CHUNK_SIZE = 16 * 1024
CHUNK_MESSAGE_OVERHEAD = 128
"""Bytes a ``fw_chunk`` adds around its data (map, type, job id, index, bstr head), rounded up."""
DIGEST_BYTES_PER_CHUNK = 34
ENVELOPE_OVERHEAD = 512
"""Generous bound on an envelope's bytes besides the chunk digests."""


def max_chunk_size(max_payload_bytes: int) -> int:
    """The largest chunk whose ``fw_chunk`` message fits ``max_payload_bytes``."""
    return min(MAX_CHUNK_SIZE, max_payload_bytes - CHUNK_MESSAGE_OVERHEAD)


def max_image_size(max_payload_bytes: int) -> int:
    """The largest image whose envelope fits an offer, at the largest usable chunk size."""
    chunks = (MAX_ENVELOPE - ENVELOPE_OVERHEAD) // DIGEST_BYTES_PER_CHUNK
    return chunks * max_chunk_size(max_payload_bytes)


def chunk_size_candidates(requested: int | None, max_payload_bytes: int) -> list[int]:
    """Chunk sizes to try, smallest first: the requested one, or 16 KiB then the largest.

    Raises:
        InvalidChunkSize: ``requested`` is outside ``1024 .. max`` (max: 32 KiB,
            or less when the payload cap is smaller).
    """
    largest = max_chunk_size(max_payload_bytes)
    if largest < MIN_CHUNK_SIZE:
        raise InvalidChunkSize(
            f"max_payload_bytes {max_payload_bytes} leaves no room"
            f" for a {MIN_CHUNK_SIZE}-byte chunk"
        )
    if requested is not None:
        if not MIN_CHUNK_SIZE <= requested <= largest:
            raise InvalidChunkSize(f"chunk_size must be {MIN_CHUNK_SIZE}..{largest} bytes")
        return [requested]
    return sorted({min(DEFAULT_CHUNK_SIZE, largest), largest})


def payload_uri(package_id: str) -> str:
    """The envelope's URI (SUIT parameter 21): the package's name in the hub's catalogue.

    Devices fetch the bytes over MQTT (``fw_chunk_req``) or from the offer's
    ``http_path``; the URI identifies what they fetch.
    """
    return f"hub://firmware/packages/{package_id}"


def build_package_envelope(
    *,
    package_id: str,
    sequence: int,
    vendor_id: str,
    class_id: str,
    image: bytes,
    signer: Signer,
    requested_chunk_size: int | None,
    max_payload_bytes: int,
) -> tuple[bytes, int]:
    """Build and sign the package's envelope; returns it and the chunk size used.

    Raises:
        InvalidChunkSize: the requested chunk size is not allowed.
        PackageTooLarge: no allowed chunk size gives an envelope within 32 KiB.
    """
    for chunk_size in chunk_size_candidates(requested_chunk_size, max_payload_bytes):
        try:
            envelope = suit.build_envelope(
                sequence=sequence,
                vendor_id=vendor_id,
                class_id=class_id,
                image=image,
                uri=payload_uri(package_id),
                chunk_size=chunk_size,
                kid=signer.kid,
                sign=signer.sign,
                alg=signer.alg,
                max_size=MAX_ENVELOPE,
            )
        except suit.SuitMalformed:
            continue  # too many chunk digests for an offer: try a larger chunk
        return envelope, chunk_size
    raise PackageTooLarge(
        f"a {len(image)}-byte image needs more chunks than a {MAX_ENVELOPE}-byte envelope holds;"
        f" at most {max_image_size(max_payload_bytes)} bytes"
        + ("" if requested_chunk_size is None else " at the largest chunk size")
    )


def keys_from_pem(pem: bytes) -> list[CoseKey]:
    """The verification key in a PEM file (public key, or a private key's public half).

    Ed25519 keys get the hub's key id (first 8 bytes of the SHA-256 of the raw
    key), so hub envelopes select them by ``kid``; envelopes without a ``kid``
    (the draft's examples) use the single key of their algorithm.

    Raises:
        CoseError: the PEM holds no Ed25519 or P-256 key.
    """
    try:
        if b"PRIVATE KEY" in pem:
            private = serialization.load_pem_private_key(pem, password=None)
            if not isinstance(private, Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
                raise CoseError("the private key is neither Ed25519 nor P-256")
            pem = private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        public = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise CoseError(f"cannot read the key: {exc}") from exc
    if isinstance(public, Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return [CoseKey.ed25519(key_id_for(raw), raw)]
    point = b""
    if isinstance(public, ec.EllipticCurvePublicKey):
        point = public.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    return [CoseKey.from_pem(key_id_for(point or pem), pem)]
