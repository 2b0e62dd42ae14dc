"""SUIT envelopes: builder round trip, verification order, bad input, chunk checks."""

from __future__ import annotations

import hashlib
import random
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import cbor, suit
from protocols.cbor import Tag
from protocols.cose import ALG_ES256, CoseKey, sign1
from protocols.errors import (
    CoseError,
    PayloadTooLarge,
    ProtocolError,
    SignatureInvalid,
    UnknownKey,
    UnsupportedAlgorithm,
)
from protocols.suit import (
    SuitAlreadyInstalled,
    SuitChunkMismatch,
    SuitChunkOutOfRange,
    SuitChunkSize,
    SuitDigestMismatch,
    SuitError,
    SuitImageMismatch,
    SuitImageSize,
    SuitMalformed,
    SuitManifest,
    SuitRollback,
    SuitState,
    SuitWrongDevice,
    build_envelope,
    inspect_envelope,
    verify_chunk,
    verify_envelope,
    verify_image,
)

ED_PRIVATE = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
ED_OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
EC_PRIVATE = ec.derive_private_key(0x5017, ec.SECP256R1())
KID = b"fw-catalogue-1"
VENDOR = "fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe"
CLASS = "1492af14-2569-5e48-bf42-9b2d51f2ab45"
OTHER_CLASS = "00000000-0000-4000-8000-000000000001"
URI = "https://hub.example/fw/42"
IMAGE = random.Random(42).randbytes(4000)
CHUNK = 256


def ed_sign(tbs: bytes) -> bytes:
    return ED_PRIVATE.sign(tbs)


def es_sign(tbs: bytes) -> bytes:
    r, s = decode_dss_signature(EC_PRIVATE.sign(tbs, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def ed_key(kid: bytes = KID, private: Ed25519PrivateKey = ED_PRIVATE) -> CoseKey:
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return CoseKey.ed25519(kid, raw)


def es_key(kid: bytes = KID) -> CoseKey:
    return CoseKey(kid=kid, alg=ALG_ES256, key=EC_PRIVATE.public_key())


KEYS = [ed_key()]


def build(**overrides: Any) -> bytes:
    arguments: dict[str, Any] = {
        "sequence": 7,
        "vendor_id": VENDOR,
        "class_id": CLASS,
        "image": IMAGE,
        "uri": URI,
        "chunk_size": CHUNK,
        "kid": KID,
        "sign": ed_sign,
    }
    arguments.update(overrides)
    return build_envelope(**arguments)


def verify(
    data: bytes, state: SuitState | None = None, keys: list[CoseKey] | None = None, **kw: str
) -> tuple[SuitManifest, SuitState]:
    return verify_envelope(
        data,
        KEYS if keys is None else keys,
        expected_vendor=kw.get("vendor", VENDOR),
        expected_class=kw.get("cls", CLASS),
        state=SuitState() if state is None else state,
    )


ENVELOPE = build()
MANIFEST = inspect_envelope(ENVELOPE, KEYS)


# --- round trip -----------------------------------------------------------------------------


def test_build_verify_round_trip() -> None:
    manifest, state = verify(ENVELOPE)
    assert state == SuitState(highest=7)
    assert manifest.sequence == 7
    assert manifest.components == ((b"\x00",),)
    assert (manifest.vendor_id, manifest.class_id) == (VENDOR, CLASS)
    assert manifest.image_digest == hashlib.sha256(IMAGE).digest()
    assert manifest.image_size == len(IMAGE)
    assert manifest.uri == URI
    assert manifest.chunk_size == CHUNK
    assert manifest.chunk_count == 16  # 15 x 256 + 160
    assert manifest.chunk_digests[0] == hashlib.sha256(IMAGE[:CHUNK]).digest()
    assert manifest.details[0].component_id == (b"\x00",)
    verify_image(manifest, IMAGE)
    for index in range(manifest.chunk_count):
        verify_chunk(manifest, index, IMAGE[index * CHUNK : (index + 1) * CHUNK])


def test_manifest_digest_is_the_signed_digest_over_the_manifest_bstr() -> None:
    document = cbor.decode(ENVELOPE, allowed_tags=frozenset({107})).value
    manifest_bstr = cbor.encode(document[3])
    assert MANIFEST.manifest_digest == hashlib.sha256(manifest_bstr).digest()
    digest_item = cbor.decode(cbor.decode(document[2])[0])
    assert digest_item == [-16, MANIFEST.manifest_digest]


def test_es256_round_trip() -> None:
    envelope = build(sign=es_sign, alg=ALG_ES256)
    manifest, _ = verify(envelope, keys=[ed_key(), es_key()])
    assert manifest.image_digest == MANIFEST.image_digest


def test_eddsa_build_is_deterministic() -> None:
    assert build() == ENVELOPE


def test_built_envelope_follows_the_draft_layout() -> None:
    value = cbor.decode(ENVELOPE, allowed_tags=frozenset({107}))
    assert value.tag == 107
    assert set(value.value) == {2, 3}
    wrapper = cbor.decode(value.value[2])
    assert len(wrapper) == 2
    sign1_value = cbor.decode(wrapper[1], allowed_tags=frozenset({18}))
    assert sign1_value.tag == 18
    assert sign1_value.value[2] is None  # detached payload
    assert sign1_value.value[1] == {4: KID}
    manifest = cbor.decode(value.value[3])
    assert set(manifest) == {1, 2, 3, 7, 9, 20}
    common = cbor.decode(manifest[3])
    assert common[2] == [[b"\x00"]]
    shared = cbor.decode(common[4])
    assert shared[0] == 20 and shared[2:] == [1, 15, 2, 15]
    assert set(shared[1]) == {1, 2, 3, 14, suit.P_CHUNK_DIGESTS}
    assert cbor.decode(manifest[20]) == [20, {21: URI}, 21, 2, 3, 15]


def test_as_json() -> None:
    view = MANIFEST.as_json()
    assert view["sequence"] == 7
    assert view["vendor_id"] == VENDOR
    (component,) = view["components"]
    assert component["id"] == ["00"]
    assert component["image_digest"] == {
        "alg": "sha-256",
        "digest": hashlib.sha256(IMAGE).hexdigest(),
    }
    assert len(component["chunk_digests"]) == 16


def test_empty_image_has_no_chunks() -> None:
    manifest, _ = verify(build(image=b""))
    assert (manifest.image_size, manifest.chunk_count) == (0, 0)
    verify_image(manifest, b"")
    with pytest.raises(SuitChunkMismatch):
        verify_chunk(manifest, 0, b"")


def test_image_an_exact_multiple_of_the_chunk_size() -> None:
    manifest, _ = verify(build(image=IMAGE[:1024]))
    assert manifest.chunk_count == 4
    assert manifest.chunk_length(3) == CHUNK


# --- anti-rollback and identity -------------------------------------------------------------


def test_state_accepts_only_higher_sequences() -> None:
    state = SuitState().accept(0)
    assert state.highest == 0
    assert state.accept(1) == SuitState(highest=1)
    with pytest.raises(SuitAlreadyInstalled):
        state.accept(0)
    with pytest.raises(SuitRollback):
        SuitState(highest=5).accept(4)


def test_verify_envelope_anti_rollback() -> None:
    _, state = verify(ENVELOPE)
    with pytest.raises(SuitAlreadyInstalled) as caught:
        verify(ENVELOPE, state)
    assert caught.value.code == "suit_already_installed"
    with pytest.raises(SuitRollback):
        verify(build(sequence=6), state)
    _, newer = verify(build(sequence=8), state)
    assert newer.highest == 8
    assert state.highest == 7  # the state passed in is never changed


@pytest.mark.parametrize(("vendor", "cls"), [(CLASS, CLASS), (VENDOR, OTHER_CLASS)])
def test_wrong_device_is_refused(vendor: str, cls: str) -> None:
    with pytest.raises(SuitWrongDevice):
        verify(ENVELOPE, vendor=vendor, cls=cls)


def test_expected_ids_accept_any_rfc4122_spelling() -> None:
    verify(ENVELOPE, vendor=VENDOR.upper(), cls="{" + CLASS + "}")


def test_bad_expected_id_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="RFC 4122"):
        verify(ENVELOPE, vendor="not-a-uuid")


def test_device_is_checked_before_the_sequence() -> None:
    # A stale envelope for another class reports the class, and leaves the state alone.
    stale_foreign = build(sequence=1, class_id=OTHER_CLASS)
    with pytest.raises(SuitWrongDevice):
        verify(stale_foreign, SuitState(highest=7))


def test_signature_is_checked_before_the_device() -> None:
    foreign = build(class_id=OTHER_CLASS, sign=ED_OTHER.sign)
    with pytest.raises(SignatureInvalid):
        verify(foreign)


def test_digest_is_checked_before_the_signature() -> None:
    tampered = ENVELOPE.replace(URI.encode(), URI.upper().encode())
    assert tampered != ENVELOPE
    with pytest.raises(SuitDigestMismatch):
        verify(tampered, keys=[])  # no key needed to see the mismatch


def test_size_cap_comes_first() -> None:
    with pytest.raises(PayloadTooLarge):
        verify_envelope(
            ENVELOPE + b"\x00" * suit.MAX_ENVELOPE_SIZE,
            [],
            expected_vendor=VENDOR,
            expected_class=CLASS,
            state=SuitState(),
        )
    with pytest.raises(PayloadTooLarge):
        inspect_envelope(ENVELOPE, KEYS, max_size=len(ENVELOPE) - 1)


def test_key_selection() -> None:
    with pytest.raises(UnknownKey):
        verify(ENVELOPE, keys=[ed_key(b"other-kid")])
    with pytest.raises(SignatureInvalid):
        verify(ENVELOPE, keys=[ed_key(private=ED_OTHER)])
    with pytest.raises(UnknownKey):
        verify(ENVELOPE, keys=[es_key()])  # a key is only used with its own algorithm


# --- mutations ------------------------------------------------------------------------------

SMALL = build(image=b"0123456789", chunk_size=4, uri="u")
MANIFEST_SMALL = inspect_envelope(SMALL, KEYS)


def refused(data: bytes, keys: list[CoseKey] | None = None) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        verify(data, keys=keys)
    assert isinstance(caught.value, (SuitError, CoseError, PayloadTooLarge)), caught.value
    return caught.value


def flips(data: bytes) -> list[tuple[int, bytes]]:
    mutated = []
    for bit in range(len(data) * 8):
        copy = bytearray(data)
        copy[bit // 8] ^= 1 << (bit % 8)
        mutated.append((bit // 8, bytes(copy)))
    return mutated


# Two trusted keys of one algorithm, as during a key rotation: a message must name its kid.
ROTATION_KEYS = [ed_key(), ed_key(b"fw-catalogue-0", ED_OTHER)]


def test_every_single_bit_flip_is_refused() -> None:
    assert len(SMALL) < 400
    codes = {refused(mutated, ROTATION_KEYS).code for _, mutated in flips(SMALL)}
    assert {"suit_malformed", "suit_digest_mismatch", "signature_invalid"} <= codes
    assert "unknown_key" in codes


def test_single_key_bit_flips_only_pass_in_the_unsigned_kid_label() -> None:
    # COSE's unprotected header is not signed: a flip that turns the kid label (4) into
    # another label leaves a kid-less message, which the single trusted key then
    # verifies. The authenticated content, hence the manifest, is unchanged.
    kid_label = SMALL.index(b"\xa1\x04" + bytes([0x40 + len(KID)]) + KID) + 1
    accepted = []
    for position, mutated in flips(SMALL):
        try:
            manifest, _ = verify(mutated)
        except ProtocolError as exc:
            assert isinstance(exc, (SuitError, CoseError)), exc
            continue
        assert manifest == MANIFEST_SMALL
        accepted.append(position)
    assert set(accepted) == {kid_label}


def test_every_truncation_and_extension_is_refused() -> None:
    for length in range(len(SMALL)):
        refused(SMALL[:length])
    refused(SMALL + b"\x00")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    refused(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_mutated_envelopes(data: st.DataObject) -> None:
    mutated = bytearray(SMALL)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(mutated) - 1))
        mutated[position] = data.draw(st.integers(0, 255))
    if bytes(mutated) != SMALL:
        refused(bytes(mutated), ROTATION_KEYS)  # see the single-key kid-label test


cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.binary(max_size=40)
    | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.integers(-300, 30) | st.text(max_size=3), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cbor_values, cbor_values, st.dictionaries(st.integers(-2, 30), cbor_values, max_size=3))
def test_fuzz_structured_envelopes(wrapper: Any, manifest: Any, extra: dict[int, Any]) -> None:
    # Well-formed CBOR of the right outer shape, with garbage in every position.
    for document in ({2: wrapper, 3: manifest}, {**extra, 2: cbor.encode(wrapper), 3: manifest}):
        refused(cbor.encode(Tag(107, document)))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.integers(-300, 30), cbor_values, max_size=6))
def test_fuzz_signed_manifests(document: dict[int, Any]) -> None:
    # Garbage manifests that pass digest and signature must still raise only ours.
    with pytest.raises(ProtocolError) as caught:
        verify(signed(document))
    assert isinstance(caught.value, SuitError)


# --- chunks and images ----------------------------------------------------------------------


def chunks_of(image: bytes, size: int) -> list[bytes]:
    return [image[start : start + size] for start in range(0, len(image), size)]


def test_one_random_bit_flip_in_one_random_chunk_is_always_caught() -> None:
    rng = random.Random(20260704)
    chunks = chunks_of(IMAGE, CHUNK)
    for _ in range(500):
        index = rng.randrange(len(chunks))
        bad = bytearray(chunks[index])
        bit = rng.randrange(len(bad) * 8)
        bad[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(SuitChunkMismatch) as caught:
            verify_chunk(MANIFEST, index, bytes(bad))
        assert type(caught.value) is SuitChunkMismatch
        image = b"".join([*chunks[:index], bytes(bad), *chunks[index + 1 :]])
        with pytest.raises(SuitImageMismatch):  # and the image is never activated
            verify_image(MANIFEST, image)
    for index, chunk in enumerate(chunks):
        verify_chunk(MANIFEST, index, chunk)


def test_chunk_for_another_index_is_refused() -> None:
    chunks = chunks_of(IMAGE, CHUNK)
    with pytest.raises(SuitChunkMismatch):
        verify_chunk(MANIFEST, 1, chunks[2])


@pytest.mark.parametrize("index", [-1, 16, 10**6, True, "0"])
def test_chunk_index_out_of_range(index: Any) -> None:
    with pytest.raises(SuitChunkOutOfRange) as caught:
        verify_chunk(MANIFEST, index, IMAGE[:CHUNK])
    assert caught.value.code == "suit_chunk_out_of_range"


def test_chunk_sizes() -> None:
    last = IMAGE[15 * CHUNK :]
    assert len(last) == 160 == MANIFEST.chunk_length(15)
    verify_chunk(MANIFEST, 15, last)
    for index, chunk in [
        (0, IMAGE[: CHUNK + 1]),  # oversize
        (0, IMAGE[: CHUNK - 1]),  # truncated
        (15, last + b"\x00"),  # the last chunk may be shorter, not longer
        (15, last[:-1]),
        (3, b""),
    ]:
        with pytest.raises(SuitChunkSize):
            verify_chunk(MANIFEST, index, chunk)


def test_chunk_must_be_bytes() -> None:
    with pytest.raises(SuitChunkMismatch):
        verify_chunk(MANIFEST, 0, bytearray(IMAGE[:CHUNK]))  # type: ignore[arg-type]


def test_image_size_and_digest() -> None:
    with pytest.raises(SuitImageSize, match="larger"):
        verify_image(MANIFEST, IMAGE + b"\x00")
    with pytest.raises(SuitImageSize, match="smaller"):
        verify_image(MANIFEST, IMAGE[:-1])
    with pytest.raises(SuitImageMismatch) as caught:
        verify_image(MANIFEST, IMAGE[::-1])
    assert type(caught.value) is SuitImageMismatch


def test_manifest_without_image_or_chunks() -> None:
    manifest, _ = verify(signed(base_manifest(parameters={1: VENDOR_RAW, 2: CLASS_RAW})))
    assert (manifest.image_digest, manifest.image_size, manifest.chunk_size) == (None, None, None)
    with pytest.raises(SuitImageMismatch):
        verify_image(manifest, b"")
    with pytest.raises(SuitChunkMismatch):
        verify_chunk(manifest, 0, b"")


# --- builder arguments ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"vendor_id": "acme"},
        {"class_id": ""},
        {"sequence": -1},
        {"sequence": True},
        {"sequence": 2**64},
        {"chunk_size": 0},
        {"uri": ""},
        {"image": "text"},
        {"image": bytes(1 << 20), "chunk_size": 64},  # 16384 chunk digests: over the cap
    ],
)
def test_builder_refuses_bad_arguments(overrides: dict[str, Any]) -> None:
    with pytest.raises(SuitMalformed):
        build(**overrides)


def test_builder_refuses_other_algorithms() -> None:
    with pytest.raises(UnsupportedAlgorithm):
        build(alg=-35)


def test_large_image_fits_with_a_reasonable_chunk_size() -> None:
    image = bytes(1 << 20)
    manifest, _ = verify(build(image=image, chunk_size=4096))
    assert manifest.chunk_count == 256


def test_error_codes_are_stable_and_distinct() -> None:
    classes = [
        suit.SuitError,
        SuitMalformed,
        SuitDigestMismatch,
        SuitWrongDevice,
        SuitRollback,
        SuitAlreadyInstalled,
        SuitImageMismatch,
        SuitImageSize,
        SuitChunkMismatch,
        SuitChunkOutOfRange,
        SuitChunkSize,
    ]
    codes = [cls.code for cls in classes]
    assert len(set(codes)) == len(codes)
    assert all(code.startswith("suit_") for code in codes)
    assert all(issubclass(cls, ProtocolError) for cls in classes)
    assert not issubclass(SuitAlreadyInstalled, SuitRollback)


# --- hand-made envelopes: what we accept and refuse -----------------------------------------

VENDOR_RAW = bytes.fromhex(VENDOR.replace("-", ""))
CLASS_RAW = bytes.fromhex(CLASS.replace("-", ""))
DIGEST = cbor.encode([-16, hashlib.sha256(b"abc").digest()])
PARAMETERS = {1: VENDOR_RAW, 2: CLASS_RAW, 3: DIGEST, 14: 3}


def sequence_bytes(*commands: Any) -> bytes:
    return cbor.encode(list(commands))


def base_manifest(
    *, parameters: dict[int, Any] | None = None, shared_tail: tuple[Any, ...] = (), **more: Any
) -> dict[int, Any]:
    shared = sequence_bytes(20, PARAMETERS if parameters is None else parameters, 1, 15, 2, 15)
    if shared_tail:
        shared = sequence_bytes(*cbor.decode(shared), *shared_tail)
    common = {2: more.pop("components", [[b"\x00"]]), 4: shared}
    document: dict[int, Any] = {1: 1, 2: 3, 3: cbor.encode(common)}
    document.update({int(key.lstrip("k")): value for key, value in more.items()})
    return document


def signed(
    manifest: dict[int, Any] | bytes,
    extra: dict[Any, Any] | None = None,
    blocks: list[bytes] | None = None,
) -> bytes:
    manifest_bytes = manifest if isinstance(manifest, bytes) else cbor.encode(manifest)
    digest_item = cbor.encode([-16, hashlib.sha256(cbor.encode(manifest_bytes)).digest()])
    block = sign1(digest_item, kid=KID, sign=ed_sign, detached=True)
    wrapper = cbor.encode([digest_item, *([block] if blocks is None else blocks)])
    return cbor.encode(Tag(107, {2: wrapper, 3: manifest_bytes, **(extra or {})}))


def test_hand_made_base_manifest_verifies() -> None:
    manifest, _ = verify(signed(base_manifest()))
    assert manifest.image_digest == hashlib.sha256(b"abc").digest()
    assert manifest.image_size == 3
    assert manifest.uri is None


def test_unknown_custom_parameters_are_tolerated() -> None:
    verify(signed(base_manifest(parameters={**PARAMETERS, -1: "x", -70000: b"y"})))


def test_run_sequence_and_component_index_true() -> None:
    inner = sequence_bytes(12, True, 20, {21: "coap://x"})
    manifest, _ = verify(
        signed(base_manifest(components=[[b"\x00"], [b"\x01"]], k20=sequence_bytes(32, inner)))
    )
    assert [component.uri for component in manifest.details] == ["coap://x", "coap://x"]
    assert manifest.details[1].vendor_id is None


def test_try_each_parameters_are_not_extracted() -> None:
    option = sequence_bytes(20, {5: 0}, 5, 5, 20, {21: "a"})
    other = sequence_bytes(20, {5: 1}, 5, 5, 20, {21: "b"})
    manifest, _ = verify(signed(base_manifest(k20=sequence_bytes(15, [option, other, None]))))
    assert manifest.uri is None


def test_severed_install_member_is_checked_against_its_digest() -> None:
    install = sequence_bytes(20, {21: "https://cdn/x"}, 21, 2, 3, 15)
    install_digest = [-16, hashlib.sha256(cbor.encode(install)).digest()]
    document = base_manifest(k20=install_digest)
    manifest, _ = verify(signed(document, {20: install}))
    assert manifest.uri == "https://cdn/x"
    stripped, _ = verify(signed(document))  # severed and not supplied
    assert stripped.uri is None
    with pytest.raises(SuitDigestMismatch):
        verify(signed(document, {20: install.replace(b"cdn", b"evl")}))


@pytest.mark.parametrize(
    ("document", "extra", "message"),
    [
        (base_manifest(), {"payload.bin": b"x"}, "integrated payloads"),
        (base_manifest(), {5: b"x"}, "unsupported members"),
        (base_manifest(), {20: sequence_bytes(21, 2)}, "does not name"),
        (base_manifest(k20=sequence_bytes(21, 2)), {20: sequence_bytes(21, 2)}, "both"),
        (base_manifest(k20="install"), None, "severable member 20"),
        ({**base_manifest(), 1: 2}, None, "version"),
        ({**base_manifest(), 99: 0}, None, "unsupported members"),
        ({**base_manifest(), 2: -1}, None, "sequence number"),
        ({1: 1, 2: 0}, None, "common"),
        (base_manifest(parameters={**PARAMETERS, 19: b"enc"}), None, "unsupported parameter"),
        (base_manifest(parameters={**PARAMETERS, 1: b"short"}), None, "16-byte"),
        (base_manifest(parameters={**PARAMETERS, 14: "3"}), None, "parameter 14"),
        (
            base_manifest(parameters={**PARAMETERS, 3: cbor.encode([-44, bytes(64)])}),
            None,
            "SHA-256",
        ),
        (base_manifest(parameters={2: CLASS_RAW}), None, "unset parameter 1"),
        (base_manifest(shared_tail=(20, {14: 4})), None, "conflicting"),
        (base_manifest(shared_tail=(21, 2)), None, "unsupported command 21"),
        (base_manifest(shared_tail=(-5, b"")), None, "unsupported command -5"),
        (base_manifest(shared_tail=(12, 1)), None, "out of range"),
        (base_manifest(shared_tail=(1, 16)), None, "reporting policy"),
        (base_manifest(shared_tail=(20, {})), None, "at least one"),
        (base_manifest(shared_tail=(15, [sequence_bytes(1, 15)])), None, "two alternatives"),
        (base_manifest(k7=sequence_bytes(3)), None, "pairs"),
        (base_manifest(components=[]), None, "components"),
        (base_manifest(components=[[b"\x00"], [b"\x00"]]), None, "unique"),
        (base_manifest(k4=7), None, "reference URI"),
        (
            base_manifest(
                components=[[b"\x00"], [b"\x01"]],
                shared_tail=(12, 1, 20, {1: bytes(16)}),
            ),
            None,
            "disagree",
        ),
    ],
)
def test_refused_manifests(document: dict[Any, Any], extra: Any, message: str) -> None:
    with pytest.raises(SuitMalformed, match=message):
        verify(signed(document, extra))


def nested_run_sequences(depth: int) -> bytes:
    sequence = sequence_bytes(3, 15)
    for _ in range(depth):
        sequence = sequence_bytes(32, sequence)
    return sequence


def test_nesting_is_bounded() -> None:
    verify(signed(base_manifest(k7=nested_run_sequences(suit.MAX_SEQUENCE_NESTING))))
    with pytest.raises(SuitMalformed, match="nest"):
        verify(signed(base_manifest(k7=nested_run_sequences(suit.MAX_SEQUENCE_NESTING + 1))))


def chunk_parameter(*items: Any) -> dict[int, Any]:
    return {**PARAMETERS, suit.P_CHUNK_DIGESTS: cbor.encode(list(items))}


DIGEST_A = hashlib.sha256(b"ab").digest()
DIGEST_C = hashlib.sha256(b"c").digest()


def test_chunk_extension_is_read() -> None:
    manifest, _ = verify(
        signed(base_manifest(parameters=chunk_parameter(-16, 2, [DIGEST_A, DIGEST_C])))
    )
    verify_chunk(manifest, 0, b"ab")
    verify_chunk(manifest, 1, b"c")


@pytest.mark.parametrize(
    "items",
    [
        (-16, 2, [DIGEST_A]),  # 3 bytes in chunks of 2 are two chunks
        (-16, 1, [DIGEST_A, DIGEST_C]),
        (-16, 0, []),
        (-44, 2, [DIGEST_A, DIGEST_C]),
        (-16, 2, [DIGEST_A, DIGEST_C[:31]]),
        (-16, 2),
    ],
)
def test_inconsistent_chunk_extension_is_refused(items: tuple[Any, ...]) -> None:
    with pytest.raises(SuitMalformed):
        verify(signed(base_manifest(parameters=chunk_parameter(*items))))


def test_chunk_extension_needs_an_image_size() -> None:
    parameters = chunk_parameter(-16, 2, [DIGEST_A, DIGEST_C])
    del parameters[14]
    with pytest.raises(SuitMalformed, match="image size"):
        verify(signed(base_manifest(parameters=parameters)))


def test_authentication_blocks() -> None:
    document = base_manifest()
    manifest_bytes = cbor.encode(document)
    digest_item = cbor.encode([-16, hashlib.sha256(cbor.encode(manifest_bytes)).digest()])
    valid = sign1(digest_item, kid=KID, sign=ed_sign, detached=True)
    forged = sign1(digest_item, kid=KID, sign=ED_OTHER.sign, detached=True)
    verify(signed(document, blocks=[forged, valid]))  # one verifying block suffices
    with pytest.raises(SignatureInvalid):
        verify(signed(document, blocks=[forged, forged]))
    with pytest.raises(SuitMalformed, match="blocks"):
        verify(signed(document, blocks=[]))  # unauthenticated
    with pytest.raises(SuitMalformed, match="blocks"):
        verify(signed(document, blocks=[valid] * (suit.MAX_AUTH_BLOCKS + 1)))
    with pytest.raises(CoseError, match="malformed COSE_Sign1"):
        verify(signed(document, blocks=[b"\xd2\x84\x43"]))  # truncated
    attached = sign1(digest_item, kid=KID, sign=ed_sign)
    with pytest.raises(CoseError):
        verify(signed(document, blocks=[attached]))


def test_only_tagged_envelopes() -> None:
    value = cbor.decode(ENVELOPE, allowed_tags=frozenset({107}))
    with pytest.raises(SuitMalformed, match="tag 107"):
        verify(cbor.encode(value.value))
    with pytest.raises(SuitMalformed, match="tag 107"):
        verify(cbor.encode(Tag(1070, value.value)))
    with pytest.raises(SuitMalformed):
        verify("text")  # type: ignore[arg-type]


def test_cbor_pen_vendor_id_is_refused() -> None:
    parameters = {**PARAMETERS, 1: Tag(112, b"\x01\x02")}
    with pytest.raises(SuitMalformed, match="tag 112"):
        verify(signed(base_manifest(parameters=parameters)))


def test_verify_is_pure() -> None:
    first = verify(ENVELOPE)
    assert verify(ENVELOPE) == first


def test_docs_worked_example() -> None:
    # docs/suit.md section 2: the RFC 8032 test-1 key makes the envelope reproducible.
    rfc8032 = Ed25519PrivateKey.from_private_bytes(
        bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    )
    envelope = build_envelope(
        sequence=3,
        vendor_id=VENDOR,
        class_id=CLASS,
        image=b"0123456789",
        uri="https://hub.example/fw/3",
        chunk_size=4,
        kid=b"fw-1",
        sign=rfc8032.sign,
    )
    assert len(envelope) == 389
    key = CoseKey.ed25519(
        b"fw-1", bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    )
    manifest = inspect_envelope(envelope, [key])
    assert manifest.manifest_digest.hex() == (
        "34a3d02360f03601ccca9d5c24f6f43e79ad8b0d57693ba393ecdd8f9c3da3ed"
    )
    assert manifest.image_digest == hashlib.sha256(b"0123456789").digest()
    assert manifest.chunk_digests == tuple(
        hashlib.sha256(part).digest() for part in (b"0123", b"4567", b"89")
    )
