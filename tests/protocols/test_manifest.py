"""Wire form of the feature manifest and of the key-rotation document."""

import contextlib
import dataclasses
import enum

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.hashes import SHA256
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import cbor, cose
from protocols.errors import (
    DecodeError,
    MessageError,
    PayloadTooLarge,
    ProtocolError,
    SignatureInvalid,
    UnknownKey,
    UnsupportedAlgorithm,
    UnsupportedVersion,
)
from protocols.manifest import (
    MAX_FEATURES,
    MAX_MANIFEST_SIZE,
    FeatureEntry,
    FeatureManifest,
    decode_manifest,
    encode_manifest,
    manifest_to_json,
    manifest_to_wire,
    sign_manifest,
    sign_manifests,
    verify_manifest,
)
from protocols.messages import TrustAnchor
from protocols.rotation import (
    RotationDocument,
    decode_rotation,
    encode_rotation,
    sign_rotation,
    verify_rotation,
)
from tests.protocols.cbor_reference import reference_encode

DEV = "dev-00000000000000000001"
SEED = bytes(range(32))
KEY = Ed25519PrivateKey.from_private_bytes(SEED)
KID = b"hub-m-01"
COSE_KEY = cose.CoseKey(KID, cose.ALG_EDDSA, KEY.public_key())


def _manifest(**changes):
    base = {
        "device_id": DEV,
        "seq": 3,
        "issued_at": 1_800_000_000,
        "not_after": 1_800_604_800,
        "features": {
            "camera.hdr": FeatureEntry(enabled=True),
            "users": FeatureEntry(enabled=True, limit=10),
            "api-calls": FeatureEntry(enabled=True, cap=1000, period="day", overage="flag"),
            "legacy_mode": FeatureEntry(enabled=False),
        },
    }
    base.update(changes)
    return FeatureManifest(**base)


def _doc(changes=None):
    doc = cbor.decode(encode_manifest(_manifest()))
    doc.update(changes or {})
    return doc


feature_keys = st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True)
uints = st.integers(min_value=0, max_value=2**64 - 1)


@st.composite
def entries(draw):
    cap = draw(st.none() | uints)
    period = draw(st.sampled_from(["day", "month"])) if cap is not None else None
    period = period or draw(st.none() | st.sampled_from(["day", "month"]))
    return FeatureEntry(
        enabled=draw(st.booleans()),
        limit=draw(st.none() | uints),
        cap=cap,
        period=period,
        overage=draw(st.none() | st.sampled_from(["block", "allow", "flag"])),
    )


@st.composite
def manifests(draw):
    issued = draw(st.integers(min_value=0, max_value=2**64 - 2))
    return FeatureManifest(
        device_id=draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True)),
        seq=draw(st.integers(min_value=1, max_value=2**64 - 1)),
        issued_at=issued,
        not_after=draw(st.integers(min_value=issued + 1, max_value=2**64 - 1)),
        features=draw(st.dictionaries(feature_keys, entries(), max_size=8)),
    )


@given(manifests())
@settings(max_examples=200)
def test_round_trip(manifest):
    encoded = encode_manifest(manifest)
    assert decode_manifest(encoded) == manifest
    assert encode_manifest(decode_manifest(encoded)) == encoded


@given(st.binary(max_size=512))
@settings(max_examples=400)
def test_fuzz_decode_raises_only_protocol_errors(data):
    with contextlib.suppress(ProtocolError):
        decode_manifest(data)
    with contextlib.suppress(ProtocolError):
        verify_manifest(data, [COSE_KEY])
    with contextlib.suppress(ProtocolError):
        decode_rotation(data)


@given(st.integers(min_value=0), st.integers(min_value=0, max_value=255))
@settings(max_examples=400)
def test_fuzz_mutated_payload_raises_only_protocol_errors(position, value):
    payload = bytearray(encode_manifest(_manifest()))
    payload[position % len(payload)] = value
    with contextlib.suppress(ProtocolError):
        decode_manifest(bytes(payload))


def test_wire_layout_matches_the_documented_example():
    manifest = FeatureManifest(
        device_id="dev-4be0f3c1a29d7e8b5c60",
        seq=7,
        issued_at=1795000000,
        not_after=1797592000,
        features={
            "camera.hdr": FeatureEntry(enabled=True),
            "api.calls": FeatureEntry(enabled=True, cap=10000, period="month", overage="block"),
        },
    )
    assert cbor.decode(encode_manifest(manifest)) == {
        0: 1,
        1: "manifest",
        2: "dev-4be0f3c1a29d7e8b5c60",
        3: 7,
        4: 1795000000,
        5: 1797592000,
        6: {"camera.hdr": {0: True}, "api.calls": {0: True, 2: 10000, 3: "month", 4: "block"}},
    }
    # docs/manifest.md section 8 shows these bytes
    assert encode_manifest(manifest).hex() == (
        "a7000101686d616e69666573740278186465762d3462653066336331613239643765386235633630"
        "0307041a6afd86c0051a6b2513c006a2696170692e63616c6c73a400f50219271003656d6f6e7468"
        "0465626c6f636b6a63616d6572612e686472a100f5"
    )


def test_unknown_keys_are_tolerated():
    doc = _doc({99: "future"})
    doc[6]["users"][77] = [1, 2]
    assert decode_manifest(cbor.encode(doc)) == _manifest()


def test_unknown_major_version_is_rejected():
    with pytest.raises(UnsupportedVersion):
        decode_manifest(cbor.encode(_doc({0: 2})))


@pytest.mark.parametrize(
    "changes",
    [
        {0: "1"},
        {0: True},
        {1: "state"},
        {2: "a/b"},
        {2: ""},
        {2: 5},
        {3: 0},
        {3: -1},
        {3: True},
        {4: 1.5},
        {5: 1_800_000_000},
        {5: 1},
        {6: []},
        {6: {"bad key": {0: True}}},
        {6: {"k" * 65: {0: True}}},
        {6: {1: {0: True}}},
        {6: {"a": {}}},
        {6: {"a": {0: 1}}},
        {6: {"a": [True]}},
        {6: {"a": {0: True, 1: -1}}},
        {6: {"a": {0: True, 1: 2**64}}},
        {6: {"a": {0: True, 2: 5}}},
        {6: {"a": {0: True, 2: 5, 3: "week"}}},
        {6: {"a": {0: True, 4: "maybe"}}},
        {6: {f"f{i}": {0: True} for i in range(MAX_FEATURES + 1)}},
    ],
)
def test_invalid_documents_raise_message_error(changes):
    with pytest.raises(MessageError):
        decode_manifest(cbor.encode(_doc(changes)))


@pytest.mark.parametrize("missing", [0, 1, 2, 3, 4, 5, 6])
def test_missing_keys_raise_message_error(missing):
    doc = _doc()
    del doc[missing]
    with pytest.raises(MessageError):
        decode_manifest(cbor.encode(doc))


def test_not_a_map_and_bad_cbor():
    with pytest.raises(MessageError):
        decode_manifest(cbor.encode([1, "manifest"]))
    with pytest.raises(DecodeError):
        decode_manifest(b"\xa1\x00")
    with pytest.raises(PayloadTooLarge):
        decode_manifest(b"\x00" * (MAX_MANIFEST_SIZE + 1))


@pytest.mark.parametrize(
    "manifest",
    [
        _manifest(seq=0),
        _manifest(device_id="dev/1"),
        _manifest(not_after=1_800_000_000),
        _manifest(features={"a b": FeatureEntry(enabled=True)}),
        _manifest(features={"a": FeatureEntry(enabled=True, cap=3)}),
        _manifest(features={"a": FeatureEntry(enabled=True, limit=-1)}),
        _manifest(features={"a": FeatureEntry(enabled=1)}),  # type: ignore[arg-type]
        _manifest(features={f"f{i}": FeatureEntry(enabled=True) for i in range(257)}),
    ],
)
def test_encode_refuses_what_devices_would_reject(manifest):
    with pytest.raises(MessageError):
        encode_manifest(manifest)


def test_sign_and_verify():
    signed = sign_manifest(_manifest(), kid=KID, sign=KEY.sign)
    assert signed[:4] == bytes.fromhex("d28443a1")  # tag 18, array(4), h'a10127'...
    assert verify_manifest(signed, [COSE_KEY]) == _manifest()
    other = Ed25519PrivateKey.generate()
    with pytest.raises(UnknownKey):
        verify_manifest(signed, [cose.CoseKey(b"other", cose.ALG_EDDSA, other.public_key())])
    with pytest.raises(SignatureInvalid):
        verify_manifest(signed, [cose.CoseKey(KID, cose.ALG_EDDSA, other.public_key())])
    with pytest.raises(PayloadTooLarge):
        verify_manifest(signed, [COSE_KEY], max_size=len(signed) - 1)


def test_a_manifest_without_kid_is_refused():
    message = cbor.decode(sign_manifest(_manifest(), kid=KID, sign=KEY.sign), allowed_tags={18})
    message.value[1] = {}
    with pytest.raises(UnknownKey):
        verify_manifest(cbor.encode(message), [COSE_KEY])
    rotation = cbor.decode(sign_rotation(_rotation(), kid=KID, sign=KEY.sign), allowed_tags={18})
    rotation.value[1] = {}
    with pytest.raises(UnknownKey):
        verify_rotation(cbor.encode(rotation), [COSE_KEY])


def test_es256_is_not_allowed_for_manifests():
    key = ec.generate_private_key(ec.SECP256R1())

    def sign(data):
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    signed = cose.sign1(encode_manifest(_manifest()), kid=KID, sign=sign, alg=cose.ALG_ES256)
    with pytest.raises(UnsupportedAlgorithm):
        verify_manifest(signed, [cose.CoseKey(KID, cose.ALG_ES256, key.public_key())])


def test_largest_manifest_fits_the_size_cap():
    wide = FeatureEntry(
        enabled=True, limit=2**64 - 1, cap=2**64 - 1, period="month", overage="allow"
    )
    manifest = _manifest(
        device_id="d" * 64,
        seq=2**64 - 1,
        issued_at=2**64 - 2,
        not_after=2**64 - 1,
        features={f"{i:03d}".ljust(64, "x"): wide for i in range(MAX_FEATURES)},
    )
    signed = sign_manifest(manifest, kid=b"k" * 32, sign=KEY.sign)
    assert len(signed) <= MAX_MANIFEST_SIZE
    assert verify_manifest(signed, [cose.CoseKey(b"k" * 32, cose.ALG_EDDSA, KEY.public_key())])


def test_manifest_to_json():
    view = manifest_to_json(_manifest())
    assert view["seq"] == 3
    assert view["features"]["api-calls"] == {
        "enabled": True,
        "cap": 1000,
        "period": "day",
        "overage": "flag",
    }
    assert view["features"]["legacy_mode"] == {"enabled": False}


# --- rotation documents ---------------------------------------------------------------

NEW = TrustAnchor(kid=b"hub-m-02", alg=-8, key=b"\x02" * 32, role="manifest")


def _rotation(**changes):
    base = {
        "role": "manifest",
        "seq": 1,
        "anchors": (NEW,),
        "retired": (KID,),
        "issued_at": 1_800_000_000,
    }
    base.update(changes)
    return RotationDocument(**base)


def test_rotation_wire_layout_and_round_trip():
    encoded = encode_rotation(_rotation())
    assert cbor.decode(encoded) == {
        0: 1,
        1: "rotation",
        2: "manifest",
        3: 1,
        4: [[b"hub-m-02", -8, b"\x02" * 32, "manifest"]],
        5: [KID],
        6: 1_800_000_000,
    }
    assert decode_rotation(encoded) == _rotation()
    signed = sign_rotation(_rotation(), kid=KID, sign=KEY.sign)
    assert verify_rotation(signed, [COSE_KEY]) == _rotation()


@pytest.mark.parametrize(
    "rotation",
    [
        _rotation(role="root"),
        _rotation(seq=0),
        _rotation(anchors=()),
        _rotation(anchors=(NEW, NEW)),
        _rotation(anchors=(TrustAnchor(b"x", -8, b"\x03" * 32, "firmware"),)),
        _rotation(retired=(b"hub-m-02",)),
        _rotation(retired=(b"",)),
        _rotation(retired=tuple(bytes([i]) for i in range(33))),
    ],
)
def test_invalid_rotations_are_refused(rotation):
    with pytest.raises(MessageError):
        encode_rotation(rotation)


@pytest.mark.parametrize(
    "changes",
    [{0: 2}, {1: "manifest"}, {2: 5}, {3: 0}, {4: "x"}, {4: [[b"k", -8]]}, {5: [1]}, {6: -1}],
)
def test_invalid_rotation_payloads_are_refused(changes):
    doc = cbor.decode(encode_rotation(_rotation()))
    doc.update(changes)
    with pytest.raises(MessageError):
        decode_rotation(cbor.encode(doc))


def test_docs_worked_example_bytes():
    """docs/manifest.md section 8: RFC 8032 test-1 key, kid = SHA-256(pub)[:8]."""
    secret = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    key = Ed25519PrivateKey.from_private_bytes(secret)
    manifest = FeatureManifest(
        device_id="dev-4be0f3c1a29d7e8b5c60",
        seq=7,
        issued_at=1795000000,
        not_after=1797592000,
        features={
            "camera.hdr": FeatureEntry(enabled=True),
            "api.calls": FeatureEntry(enabled=True, cap=10000, period="month", overage="block"),
        },
    )
    signed = sign_manifest(manifest, kid=bytes.fromhex("21fe31dfa154a261"), sign=key.sign)
    assert signed.hex() == (
        "d28443a10127a1044821fe31dfa154a2615865a7000101686d616e69666573740278186465762d"
        "34626530663363316132396437653862356336300307041a6afd86c0051a6b2513c006a2696170"
        "692e63616c6c73a400f50219271003656d6f6e74680465626c6f636b6a63616d6572612e686472"
        "a100f55840e7f933a5549a453afde610f0e23bbc3d27c3541f81eb4b6e725fec0f6224053d3850"
        "703b9fcda9931735a174910cb80a0d64c89a91114eb4b089a937bc21dc07"
    )
    assert len(signed) == 186


# --- the assembled encoding and batch signing equal the reference bytes -----------


def _reference_signed(manifest, kid=KID):
    """Sign as the first implementation did: generic CBOR of every structure."""
    payload = reference_encode(manifest_to_wire(manifest))
    protected = reference_encode({1: cose.ALG_EDDSA})
    to_be_signed = reference_encode(["Signature1", protected, b"", payload])
    body = [protected, {4: kid}, payload, KEY.sign(to_be_signed)]
    return reference_encode(cbor.Tag(18, body))


class _Period(enum.StrEnum):
    DAY = "day"


class _Limit(enum.IntEnum):
    TEN = 10


@given(manifests())
@settings(max_examples=300)
def test_encoding_is_byte_identical_to_the_reference(manifest):
    assert encode_manifest(manifest) == reference_encode(manifest_to_wire(manifest))
    assert sign_manifest(manifest, kid=KID, sign=KEY.sign) == _reference_signed(manifest)


@given(st.lists(manifests(), min_size=1, max_size=4), st.data())
@settings(max_examples=100)
def test_sign_manifests_equals_sign_manifest_one_by_one(batch, data):
    # Share feature dicts between some manifests, as a fleet-wide change does.
    shared = batch[0].features
    batch = [
        dataclasses.replace(m, features=shared) if data.draw(st.booleans()) else m for m in batch
    ]
    expected = [_reference_signed(m) for m in batch]
    assert sign_manifests(batch, kid=KID, sign=KEY.sign) == expected
    assert [sign_manifest(m, kid=KID, sign=KEY.sign) for m in batch] == expected


def test_equal_features_of_subclassed_values_encode_as_their_base_values():
    plain = _manifest(features={"u": FeatureEntry(True, limit=10, cap=1, period="day")})
    fancy = _manifest(
        features={"u": FeatureEntry(True, limit=_Limit.TEN, cap=1, period=_Period.DAY)}
    )
    assert encode_manifest(fancy) == encode_manifest(plain)
    assert encode_manifest(fancy) == reference_encode(manifest_to_wire(fancy))


def test_sign_manifests_checks_every_manifest_sharing_features():
    shared = _manifest().features
    good = _manifest(features=shared)
    for bad in (
        _manifest(features=shared, seq=0),
        _manifest(features=shared, device_id="dev/1"),
        _manifest(features=shared, not_after=1),
    ):
        with pytest.raises(MessageError):
            sign_manifests([good, bad], kid=KID, sign=KEY.sign)


def test_sign_manifests_checks_features_after_a_valid_one_was_cached():
    sign_manifests([_manifest()], kid=KID, sign=KEY.sign)
    # Equal to a cached valid entry (1 == True), but not a valid one itself.
    bad = _manifest(features={"camera.hdr": FeatureEntry(enabled=1)})  # type: ignore[arg-type]
    sign_manifests([_manifest(features={"camera.hdr": FeatureEntry(True)})], kid=KID, sign=KEY.sign)
    with pytest.raises(MessageError):
        sign_manifests([bad], kid=KID, sign=KEY.sign)
    with pytest.raises(MessageError):
        encode_manifest(bad)


def test_sign_manifests_of_nothing():
    assert sign_manifests([], kid=KID, sign=KEY.sign) == []
