from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PrivateKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import cbor
from protocols.cbor import Tag
from protocols.cose import (
    ALG_EDDSA,
    ALG_ES256,
    COSE_SIGN1_TAG,
    HDR_ALG,
    HDR_KID,
    CoseKey,
    Profile,
    Sign1,
    Sign1Signer,
    decode_sign1,
    sig_structure,
    sign1,
    verify_sign1,
)
from protocols.errors import (
    CoseError,
    DecodeError,
    MessageError,
    PayloadTooLarge,
    ProtocolError,
    SignatureInvalid,
    UnknownKey,
    UnsupportedAlgorithm,
)
from tests.protocols.cbor_reference import reference_encode

ED_PRIVATE = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
ED_OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
EC_PRIVATE = ec.derive_private_key(0xC05E, ec.SECP256R1())
KID = b"hub-2026"
PAYLOAD = b"entitlements v1"


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
    numbers = EC_PRIVATE.public_key().public_numbers()
    return CoseKey.es256_from_xy(kid, numbers.x.to_bytes(32, "big"), numbers.y.to_bytes(32, "big"))


def build(
    protected: Any = None,
    unprotected: Any = None,
    payload: Any = PAYLOAD,
    *,
    tag: int | None = COSE_SIGN1_TAG,
    signer: Any = ed_sign,
    external_aad: bytes = b"",
) -> bytes:
    """Hand-build a Sign1 (to test layouts sign1() never produces)."""
    protected_bytes = cbor.encode({HDR_ALG: ALG_EDDSA} if protected is None else protected)
    if isinstance(protected, bytes):
        protected_bytes = protected
    unprotected = {HDR_KID: KID} if unprotected is None else unprotected
    signed_payload = payload if isinstance(payload, bytes) else b""
    signature = signer(sig_structure(protected_bytes, signed_payload, external_aad))
    body = [protected_bytes, unprotected, payload, signature]
    return cbor.encode(body if tag is None else Tag(tag, body))


# --- layout ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alg", "signer", "protected"), [(ALG_EDDSA, ed_sign, "a10127"), (ALG_ES256, es_sign, "a10126")]
)
def test_sign1_layout(alg: int, signer: Any, protected: str) -> None:
    data = sign1(PAYLOAD, kid=KID, sign=signer, alg=alg)
    value = cbor.decode(data, allowed_tags=frozenset({18}))
    assert isinstance(value, Tag) and value.tag == COSE_SIGN1_TAG
    protected_bytes, unprotected, payload, signature = value.value
    assert protected_bytes.hex() == protected
    assert unprotected == {HDR_KID: KID}
    assert payload == PAYLOAD
    assert len(signature) == 64


def test_sign1_is_deterministic_for_eddsa() -> None:
    assert sign1(PAYLOAD, kid=KID, sign=ed_sign) == sign1(PAYLOAD, kid=KID, sign=ed_sign)


def test_sig_structure_layout() -> None:
    assert sig_structure(b"\xa1\x01\x27", b"P", b"A") == cbor.encode(
        ["Signature1", b"\xa1\x01\x27", b"A", b"P"]
    )
    assert sig_structure(b"", b"").hex() == "846a5369676e617475726531404040"


# --- round trips ----------------------------------------------------------------


@pytest.mark.parametrize("profile", list(Profile))
@pytest.mark.parametrize(
    ("alg", "signer", "key"), [(ALG_EDDSA, ed_sign, ed_key), (ALG_ES256, es_sign, es_key)]
)
def test_round_trip(profile: Profile, alg: int, signer: Any, key: Any) -> None:
    data = sign1(PAYLOAD, kid=KID, sign=signer, alg=alg)
    message = verify_sign1(data, [key()], profile=profile)
    assert isinstance(message, Sign1)
    assert (message.payload, message.alg, message.kid) == (PAYLOAD, alg, KID)
    assert message.protected == {HDR_ALG: alg}


def test_verify_picks_the_key_by_kid_and_alg() -> None:
    data = sign1(PAYLOAD, kid=KID, sign=ed_sign)
    ring = [es_key(KID), ed_key(b"other", ED_OTHER), ed_key(KID)]
    assert verify_sign1(data, ring).kid == KID


def test_detached_payload() -> None:
    data = sign1(PAYLOAD, kid=KID, sign=ed_sign, detached=True)
    assert cbor.decode(data, allowed_tags=frozenset({18})).value[2] is None
    message = verify_sign1(data, [ed_key()], detached_payload=PAYLOAD)
    assert message.payload is None
    with pytest.raises(CoseError, match="detached"):
        verify_sign1(data, [ed_key()])
    with pytest.raises(SignatureInvalid):
        verify_sign1(data, [ed_key()], detached_payload=PAYLOAD + b"!")
    attached = sign1(PAYLOAD, kid=KID, sign=ed_sign)
    with pytest.raises(CoseError):
        verify_sign1(attached, [ed_key()], detached_payload=PAYLOAD)


def test_external_aad() -> None:
    data = sign1(PAYLOAD, kid=KID, sign=es_sign, alg=ALG_ES256, external_aad=b"device-42")
    verify_sign1(data, [es_key()], external_aad=b"device-42")
    for wrong in (b"", b"device-43"):
        with pytest.raises(SignatureInvalid):
            verify_sign1(data, [es_key()], external_aad=wrong)


# --- key selection --------------------------------------------------------------


def test_wrong_key_same_kid() -> None:
    data = sign1(PAYLOAD, kid=KID, sign=ed_sign)
    with pytest.raises(SignatureInvalid):
        verify_sign1(data, [ed_key(KID, ED_OTHER)])


def test_unknown_kid() -> None:
    data = sign1(PAYLOAD, kid=b"nobody", sign=ed_sign)
    with pytest.raises(UnknownKey):
        verify_sign1(data, [ed_key()])
    with pytest.raises(UnknownKey):
        verify_sign1(data, [])


def test_key_of_another_alg_is_never_used() -> None:
    data = sign1(PAYLOAD, kid=KID, sign=ed_sign)
    with pytest.raises(UnknownKey):
        verify_sign1(data, [es_key(KID)])


def test_message_without_kid_uses_the_single_key_of_its_alg() -> None:
    data = build(unprotected={})
    assert verify_sign1(data, [ed_key(), es_key()]).kid is None
    with pytest.raises(UnknownKey):
        verify_sign1(data, [ed_key(), ed_key(b"second", ED_OTHER)])
    with pytest.raises(UnknownKey):
        verify_sign1(data, [es_key()])


def test_alg_checked_before_any_key_is_consulted() -> None:
    def untouchable() -> Iterator[CoseKey]:
        raise AssertionError("keys consulted before the alg check")
        yield  # pragma: no cover

    data = sign1(PAYLOAD, kid=KID, sign=ed_sign)
    with pytest.raises(UnsupportedAlgorithm):
        verify_sign1(data, untouchable(), allowed_algs=frozenset({ALG_ES256}))
    with pytest.raises(UnsupportedAlgorithm):
        verify_sign1(data, untouchable(), allowed_algs=frozenset())


def test_allowing_an_unimplemented_alg_does_not_enable_it() -> None:
    data = build(protected={HDR_ALG: -35})
    with pytest.raises(UnsupportedAlgorithm):
        verify_sign1(data, [ed_key()], allowed_algs=frozenset({-35, ALG_EDDSA}))


# --- tampering and profile rules ------------------------------------------------


def test_tampered_protected_header() -> None:
    original = cbor.decode(sign1(PAYLOAD, kid=KID, sign=ed_sign), allowed_tags=frozenset({18}))
    body = list(original.value)
    body[0] = cbor.encode({HDR_ALG: ALG_EDDSA, 3: 0})
    with pytest.raises(SignatureInvalid):
        verify_sign1(cbor.encode(Tag(18, body)), [ed_key()])
    body[0] = cbor.encode({HDR_ALG: ALG_ES256})
    with pytest.raises(UnknownKey):
        verify_sign1(cbor.encode(Tag(18, body)), [ed_key()])


def test_strict_refuses_alg_in_unprotected_header() -> None:
    data = build(protected=b"", unprotected={HDR_ALG: ALG_EDDSA, HDR_KID: KID})
    with pytest.raises(UnsupportedAlgorithm):
        verify_sign1(data, [ed_key()])
    assert verify_sign1(data, [ed_key()], profile=Profile.RFC9052).alg == ALG_EDDSA


def test_strict_refuses_alg_in_both_headers_even_if_equal() -> None:
    data = build(unprotected={HDR_ALG: ALG_EDDSA, HDR_KID: KID})
    for profile in Profile:
        with pytest.raises(CoseError):
            verify_sign1(data, [ed_key()], profile=profile)


def test_strict_requires_the_tag() -> None:
    data = build(tag=None)
    with pytest.raises(CoseError, match="tag 18"):
        verify_sign1(data, [ed_key()])
    assert verify_sign1(data, [ed_key()], profile=Profile.RFC9052).payload == PAYLOAD


@pytest.mark.parametrize("profile", list(Profile))
@pytest.mark.parametrize(
    ("data", "error"),
    [
        (build(tag=998), CoseError),
        (cbor.encode(Tag(18, Tag(18, []))), CoseError),
        (build(unprotected={HDR_KID: KID, 99: Tag(18, [])}), CoseError),
        (build(unprotected={HDR_KID: KID, 99: Tag(1, 0)}), DecodeError),
        (cbor.encode(Tag(18, [b"", {}, PAYLOAD])), CoseError),
        (cbor.encode(Tag(18, {1: 2})), CoseError),
        (build(protected=b"\x80"), CoseError),
        (build(protected=b"\xa1\x01"), DecodeError),
        (build(protected=b""), UnsupportedAlgorithm),
        (build(protected={}), UnsupportedAlgorithm),
        (build(protected={HDR_ALG: "EdDSA"}), UnsupportedAlgorithm),
        (build(protected={HDR_ALG: True}), UnsupportedAlgorithm),
        (build(protected={HDR_ALG: ALG_EDDSA, 2: [3]}), CoseError),
        (build(unprotected=[]), CoseError),
        (build(unprotected={HDR_KID: "text kid"}), CoseError),
        (build(payload="text"), CoseError),
        (build(signer=lambda _: "not bytes"), CoseError),
        (build(signer=lambda tbs: ed_sign(tbs)[:63]), SignatureInvalid),
        (build(signer=lambda tbs: ed_sign(tbs) + b"\x00"), SignatureInvalid),
        (sign1(PAYLOAD, kid=KID, sign=ed_sign) + b"\x00", DecodeError),
        (b"\xd2" + bytes(70000), PayloadTooLarge),
    ],
)
def test_malformed_messages(profile: Profile, data: bytes, error: type[ProtocolError]) -> None:
    with pytest.raises(error):
        verify_sign1(data, [ed_key()], profile=profile)


@pytest.mark.parametrize("signature", [bytes(64), b"\xff" * 64, bytes(63), bytes(65)])
def test_bad_es256_signatures(signature: bytes) -> None:
    data = build(protected={HDR_ALG: ALG_ES256}, signer=lambda _: signature)
    with pytest.raises(SignatureInvalid):
        verify_sign1(data, [es_key()])


def test_es256_der_signature_is_refused() -> None:
    der = EC_PRIVATE.sign(b"x", ec.ECDSA(hashes.SHA256()))
    data = build(protected={HDR_ALG: ALG_ES256}, signer=lambda _: der)
    with pytest.raises(SignatureInvalid):
        verify_sign1(data, [es_key()])


def test_every_single_bit_flip_is_rejected() -> None:
    data = sign1(b"on", kid=b"k1", sign=ed_sign)
    # Two EdDSA keys: a flip that drops the kid cannot fall back to a single key.
    ring = [ed_key(b"k1"), ed_key(b"k2", ED_OTHER), es_key(b"k1")]
    for bit in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        for profile in Profile:
            with pytest.raises(ProtocolError):
                verify_sign1(bytes(flipped), ring, profile=profile)


def test_bit_flips_accepted_with_one_key_never_change_signed_content() -> None:
    # With one trusted key, flipping the unprotected kid label (4 -> 5) leaves a
    # kid-less message that still verifies: harmless, as nothing signed changed.
    data = sign1(b"on", kid=b"k1", sign=ed_sign)
    for bit in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        try:
            message = verify_sign1(bytes(flipped), [ed_key(b"k1")])
        except ProtocolError:
            continue
        assert (message.protected_bytes, message.payload) == (b"\xa1\x01\x27", b"on")


def test_decode_sign1_does_not_verify() -> None:
    data = build(signer=lambda _: bytes(64))
    message = decode_sign1(data)
    assert (message.alg, message.kid, message.payload) == (ALG_EDDSA, KID, PAYLOAD)
    with pytest.raises(SignatureInvalid):
        verify_sign1(data, [ed_key()])


# --- signing and keys -----------------------------------------------------------


def test_sign1_refusals() -> None:
    with pytest.raises(UnsupportedAlgorithm):
        sign1(PAYLOAD, kid=KID, sign=ed_sign, alg=-35)
    with pytest.raises(CoseError):
        sign1(
            PAYLOAD,
            kid=KID,
            sign=lambda tbs: EC_PRIVATE.sign(tbs, ec.ECDSA(hashes.SHA256())),
            alg=ALG_ES256,
        )
    with pytest.raises(CoseError):
        sign1("text", kid=KID, sign=ed_sign)  # type: ignore[arg-type]
    with pytest.raises(CoseError):
        sign1(PAYLOAD, kid="kid", sign=ed_sign)  # type: ignore[arg-type]


def test_keys_from_pem() -> None:
    ed_pem = ED_PRIVATE.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    ec_pem = EC_PRIVATE.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert CoseKey.from_pem(KID, ed_pem).alg == ALG_EDDSA
    assert CoseKey.from_pem(KID, ed_pem).raw_public_bytes() == ed_key().raw_public_bytes()
    assert CoseKey.from_pem(KID, ec_pem).alg == ALG_ES256
    for other in (
        Ed448PrivateKey.generate().public_key(),
        ec.generate_private_key(ec.SECP384R1()).public_key(),
    ):
        pem = other.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        with pytest.raises(UnsupportedAlgorithm):
            CoseKey.from_pem(KID, pem)
    with pytest.raises(CoseError):
        CoseKey.from_pem(KID, b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")


def test_key_constructors_refuse_mismatches() -> None:
    with pytest.raises(UnsupportedAlgorithm):
        CoseKey.ed25519(KID, bytes(57))
    with pytest.raises(UnsupportedAlgorithm):
        CoseKey.es256_from_xy(KID, bytes(48), bytes(48))
    with pytest.raises(CoseError):
        CoseKey.es256_from_xy(KID, bytes(32), bytes(32))  # not on the curve
    with pytest.raises(UnsupportedAlgorithm):
        CoseKey(kid=KID, alg=ALG_ES256, key=ED_PRIVATE.public_key())
    with pytest.raises(UnsupportedAlgorithm):
        es_key().raw_public_bytes()


def test_signing_doc_worked_example() -> None:
    # docs/signing.md section 8: RFC 8032 test key 1, kid "hub-1".
    secret = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    private = Ed25519PrivateKey.from_private_bytes(secret)
    payload = cbor.encode({"v": 1, "seq": 7})
    assert payload.hex() == "a26176016373657107"
    to_be_signed = sig_structure(b"\xa1\x01\x27", payload)
    assert to_be_signed.hex() == "846a5369676e61747572653143a101274049a26176016373657107"
    data = sign1(payload, kid=b"hub-1", sign=private.sign)
    assert data.hex() == (
        "d28443a10127a104456875622d3149a26176016373657107"
        "584041dbae7a419b204d08f2d470198570da060641730fd115ee5be85687d2f5bf4c"
        "6ffb42e43311ad282b134fa6958ef1c8c91a218b0b11403753177fe62a1b0008"
    )
    public = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    assert verify_sign1(data, [CoseKey.ed25519(b"hub-1", public)]).payload == payload


# --- the assembled layouts are byte-identical to the generic encoding -----------


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=400),
    st.binary(max_size=40),
    st.binary(max_size=40),
    st.booleans(),
    st.sampled_from([ALG_EDDSA, ALG_ES256]),
)
def test_sign1_is_byte_identical_to_the_reference_encoding(
    payload: bytes, kid: bytes, aad: bytes, detached: bool, alg: int
) -> None:
    seen: list[bytes] = []

    def fixed_signer(tbs: bytes) -> bytes:
        seen.append(tbs)
        return bytes(range(64))

    data = sign1(payload, kid=kid, sign=fixed_signer, alg=alg, external_aad=aad, detached=detached)
    protected = reference_encode({HDR_ALG: alg})
    assert seen == [reference_encode(["Signature1", protected, aad, payload])]
    body = [protected, {HDR_KID: kid}, None if detached else payload, bytes(range(64))]
    assert data == reference_encode(Tag(COSE_SIGN1_TAG, body))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=300), st.binary(max_size=30))
def test_sig_structure_is_byte_identical_to_the_reference(
    protected: bytes, payload: bytes, aad: bytes
) -> None:
    expected = reference_encode(["Signature1", protected, aad, payload])
    assert sig_structure(protected, payload, aad) == expected


def test_sig_structure_refuses_non_bytes_as_before() -> None:
    with pytest.raises(MessageError):
        sig_structure(b"", object(), b"")  # type: ignore[arg-type]


@pytest.mark.parametrize("alg", [ALG_EDDSA, ALG_ES256])
def test_known_protected_headers_decode_as_the_generic_decoder_does(alg: int) -> None:
    signer = ed_sign if alg == ALG_EDDSA else es_sign
    message = decode_sign1(sign1(PAYLOAD, kid=KID, sign=signer, alg=alg))
    assert message.protected == cbor.decode(message.protected_bytes) == {HDR_ALG: alg}
    message.protected[99] = "mutated"  # a fresh dict every time
    assert decode_sign1(sign1(PAYLOAD, kid=KID, sign=signer, alg=alg)).protected == {HDR_ALG: alg}


def test_ed25519_keys_from_equal_bytes_verify_alike_and_short_keys_still_fail() -> None:
    raw = ED_PRIVATE.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    first, second = CoseKey.ed25519(b"a", raw), CoseKey.ed25519(b"b", bytes(bytearray(raw)))
    assert first.raw_public_bytes() == second.raw_public_bytes() == raw
    data = sign1(PAYLOAD, kid=b"b", sign=ed_sign)
    assert verify_sign1(data, [second]).kid == b"b"
    with pytest.raises(UnsupportedAlgorithm):
        CoseKey.ed25519(KID, raw[:31])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.binary(max_size=40), st.sampled_from([ALG_EDDSA, ALG_ES256]))
def test_sign1_signer_equals_sign1(payload: bytes, kid: bytes, alg: int) -> None:
    signer = ed_sign if alg == ALG_EDDSA else (lambda tbs: bytes(range(64)))
    expected = sign1(payload, kid=kid, sign=signer, alg=alg)
    assert Sign1Signer(kid=kid, sign=signer, alg=alg).sign(payload) == expected


def test_sign1_signer_refuses_what_sign1_refuses() -> None:
    with pytest.raises(UnsupportedAlgorithm):
        Sign1Signer(kid=KID, sign=ed_sign, alg=-35)
    with pytest.raises(CoseError):
        Sign1Signer(kid="kid", sign=ed_sign)  # type: ignore[arg-type]
    with pytest.raises(CoseError):
        Sign1Signer(kid=KID, sign=ed_sign).sign("text")  # type: ignore[arg-type]
    with pytest.raises(CoseError):
        Sign1Signer(kid=KID, sign=lambda _tbs: b"short").sign(PAYLOAD)
