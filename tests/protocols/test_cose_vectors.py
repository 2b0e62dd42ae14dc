"""Conformance against the COSE working group's public examples (../shared/vectors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from protocols import cbor
from protocols.cose import ALG_EDDSA, ALG_ES256, CoseKey, Profile, sig_structure, verify_sign1
from protocols.errors import (
    CoseError,
    ProtocolError,
    SignatureInvalid,
    UnknownKey,
    UnsupportedAlgorithm,
)
from tests.protocols import vectors
from tests.protocols.vectors import cose_files, load

pytestmark = vectors.requires_cose_vectors

PASS = cose_files("sign1-tests", "sign-pass-*.json")
FAIL = cose_files("sign1-tests", "sign-fail-*.json")
ALL = [*cose_files("sign1-tests"), *cose_files("ecdsa-examples"), *cose_files("eddsa-examples")]


def ids(paths: list[Path]) -> list[str]:
    return [path.stem for path in paths]


def verify(vector: dict[str, Any], profile: Profile, keys: list[CoseKey] | None = None) -> Any:
    return verify_sign1(
        vectors.message(vector),
        [vectors.cose_key(vector)] if keys is None else keys,
        profile=profile,
        external_aad=vectors.external_aad(vector),
    )


def test_vector_directories_are_populated() -> None:
    assert len(PASS) == 3
    assert len(FAIL) == 6
    assert len(ALL) == 15


@pytest.mark.parametrize("path", PASS, ids=ids(PASS))
def test_sign_pass_vectors_verify_under_rfc9052(path: Path) -> None:
    vector = load(path)
    assert not vector.get("fail", False)
    message = verify(vector, Profile.RFC9052)
    assert message.payload == vectors.plaintext(vector)
    assert message.alg == ALG_ES256
    assert message.kid == b"11"


# What each vector's `failures` field changed, and the error that change must produce.
FAILURE_ERRORS: dict[str, type[ProtocolError]] = {
    "ChangeCBORTag": CoseError,  # tag 998; the signature itself still verifies
    "ChangeTag": SignatureInvalid,  # a payload byte changed after signing
    "ChangeAttr": UnsupportedAlgorithm,  # alg replaced by -999 or "unknown"
    "AddProtected": SignatureInvalid,
    "RemoveProtected": SignatureInvalid,
}


@pytest.mark.parametrize("profile", list(Profile))
@pytest.mark.parametrize("path", FAIL, ids=ids(FAIL))
def test_sign_fail_vectors_are_rejected(path: Path, profile: Profile) -> None:
    vector = load(path)
    assert vector["fail"] is True
    (failure,) = vector["input"]["failures"]
    expected = FAILURE_ERRORS[failure]
    with pytest.raises(ProtocolError) as caught:
        verify(vector, profile)
    assert caught.type is expected, f"{failure}: {caught.value!r}"


def test_sign_fail_01_signature_is_valid_under_the_right_tag() -> None:
    # The tag check must be a step of its own: retagged 18, the message verifies.
    vector = load(vectors.COSE_DIR / "sign1-tests" / "sign-fail-01.json")
    retagged = cbor.encode(cbor.Tag(18, vectors.raw_sign1_items(vectors.message(vector))))
    verify_sign1(retagged, [vectors.cose_key(vector)])


def _built_to_be_signed(vector: dict[str, Any]) -> bytes:
    protected, _, payload, _ = vectors.raw_sign1_items(vectors.message(vector))
    # RFC 9052 4.4: no protected attributes means a zero-length bstr (sign-pass-01 sends h'a0').
    signed_protected = b"" if cbor.decode(protected or b"\xa0") == {} else protected
    return sig_structure(signed_protected, payload, vectors.external_aad(vector))


# Failures that change signed content after ToBeSign_hex was computed.
CONTENT_CHANGING = {"ChangeTag", "ChangeAttr", "AddProtected", "RemoveProtected"}


@pytest.mark.parametrize("path", ALL, ids=ids(ALL))
def test_sig_structure_matches_to_be_signed(path: Path) -> None:
    vector = load(path)
    built = _built_to_be_signed(vector)
    if set(vector["input"].get("failures", {})) & CONTENT_CHANGING:
        assert built != vectors.to_be_signed(vector)
    else:
        assert built.hex() == vectors.to_be_signed(vector).hex()


def test_strict_profile_refuses_sign_pass_01_and_03() -> None:
    pass_01 = load(vectors.COSE_DIR / "sign1-tests" / "sign-pass-01.json")
    pass_03 = load(vectors.COSE_DIR / "sign1-tests" / "sign-pass-03.json")
    with pytest.raises(UnsupportedAlgorithm, match="protected"):
        verify(pass_01, Profile.STRICT)
    with pytest.raises(CoseError, match="tag 18") as caught:
        verify(pass_03, Profile.STRICT)
    assert caught.type is CoseError


def test_strict_profile_accepts_sign_pass_02() -> None:
    vector = load(vectors.COSE_DIR / "sign1-tests" / "sign-pass-02.json")
    assert verify(vector, Profile.STRICT).payload == vectors.plaintext(vector)


@pytest.mark.parametrize("profile", list(Profile))
@pytest.mark.parametrize(
    ("name", "alg"),
    [("ecdsa-examples/ecdsa-sig-01", ALG_ES256), ("eddsa-examples/eddsa-sig-01", ALG_EDDSA)],
)
def test_supported_examples_verify(name: str, alg: int, profile: Profile) -> None:
    vector = load(vectors.COSE_DIR / f"{name}.json")
    message = verify(vector, profile)
    assert message.alg == alg
    assert message.protected == {1: alg, 3: 0}
    assert message.payload == vectors.plaintext(vector)


@pytest.mark.parametrize(
    ("name", "alg"),
    [
        ("ecdsa-sig-02", -35),  # ES384, P-384 key
        ("ecdsa-sig-03", -36),  # ES512, P-521 key
        ("ecdsa-sig-04", -36),  # ES512 (SHA-512) over a P-256 key
    ],
)
def test_other_ecdsa_algorithms_are_refused(name: str, alg: int) -> None:
    vector = load(vectors.COSE_DIR / "ecdsa-examples" / f"{name}.json")
    data = vectors.message(vector)
    assert cbor.decode(vectors.raw_sign1_items(data)[0]) == {1: alg}
    p256_key = CoseKey.es256_from_xy(b"11", *_p256_xy())
    for profile in Profile:
        # Refused on alg alone, before the (absent or mismatched) key matters.
        for keys in ([], [p256_key]):
            with pytest.raises(UnsupportedAlgorithm):
                verify_sign1(data, keys, profile=profile)
        with pytest.raises(UnsupportedAlgorithm):
            verify_sign1(data, [], profile=profile, allowed_algs=frozenset({alg}))
    if vectors.jwk(vector)["crv"] != "P-256":
        with pytest.raises(UnsupportedAlgorithm):
            vectors.cose_key(vector)


def _p256_xy() -> tuple[bytes, bytes]:
    key = vectors.jwk(load(vectors.COSE_DIR / "ecdsa-examples" / "ecdsa-sig-01.json"))
    return vectors.b64url(key["x"]), vectors.b64url(key["y"])


def test_ed448_example_is_refused() -> None:
    # eddsa-sig-02 declares alg EdDSA (-8), which we allow, but signs with Ed448:
    # our profile binds -8 to Ed25519, so no Ed448 key can ever be trusted.
    vector = load(vectors.COSE_DIR / "eddsa-examples" / "eddsa-sig-02.json")
    data = vectors.message(vector)
    assert vectors.jwk(vector)["crv"] == "Ed448"
    assert cbor.decode(vectors.raw_sign1_items(data)[0]) == {1: ALG_EDDSA}
    with pytest.raises(UnsupportedAlgorithm):
        vectors.cose_key(vector)
    with pytest.raises(UnknownKey):
        verify_sign1(data, [])
    impostor = CoseKey.ed25519(b"ed448", bytes.fromhex(_ed25519_x()))
    with pytest.raises(SignatureInvalid):
        verify_sign1(data, [impostor])


def _ed25519_x() -> str:
    return vectors.jwk(load(vectors.COSE_DIR / "eddsa-examples" / "eddsa-sig-01.json"))["x_hex"]


@vectors.requires_suit_vectors
@pytest.mark.parametrize("index", range(6))
def test_suit_examples_cose_sign1_verify_detached(index: int) -> None:
    # The SUIT authentication wrapper: [bstr(SUIT_Digest), bstr(COSE_Sign1)], payload
    # detached, no kid, ES256; the signed payload is the SUIT_Digest encoding.
    envelope = cbor.decode(vectors.suit_envelope(index), allowed_tags=frozenset({107}))
    digest, cose_sign1 = cbor.decode(envelope.value[2])
    key = CoseKey.from_pem(b"suit", vectors.suit_public_key_pem())
    message = verify_sign1(cose_sign1, [key], detached_payload=digest)
    assert (message.alg, message.kid, message.payload) == (ALG_ES256, None, None)
    with pytest.raises(SignatureInvalid):
        verify_sign1(cose_sign1, [key], detached_payload=digest[:-1] + b"\x00")
