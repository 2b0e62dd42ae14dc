"""Conformance over the draft's SUIT examples (../shared/vectors/suit, never copied here).

The example image digests are placeholders: the examples are used for parsing,
authentication, identity and sequence checks, never to verify an image.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from protocols import cbor
from protocols.cbor import Tag
from protocols.cose import ALG_ES256, CoseKey
from protocols.errors import CoseError, ProtocolError, SignatureInvalid, UnknownKey
from protocols.suit import (
    SuitAlreadyInstalled,
    SuitDigestMismatch,
    SuitError,
    SuitMalformed,
    SuitManifest,
    SuitRollback,
    SuitState,
    SuitWrongDevice,
    inspect_envelope,
    verify_envelope,
)

SUIT_DIR = Path(__file__).resolve().parents[3] / "shared" / "vectors" / "suit"
README = SUIT_DIR.parent / "README.md"

pytestmark = pytest.mark.skipif(
    not (SUIT_DIR / "example0.txt").is_file() or not README.is_file(),
    reason=f"SUIT examples (draft-ietf-suit-manifest) not found at {SUIT_DIR}",
)

PLACEHOLDER = bytes.fromhex("00112233445566778899aabbccddeeff0123456789abcdeffedcba9876543210")
PLACEHOLDER_2 = bytes.fromhex("0123456789abcdeffedcba987654321000112233445566778899aabbccddeeff")
OTHER_ID = "5b7c1a58-0b6c-4d8e-9a59-7f2b1e9e4d11"


def read_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8-sig").replace("\r\n", "\n")


def hex_blocks(index: int) -> list[bytes]:
    """Every hex block of exampleN.txt, in order (the last: the full envelope)."""
    text = read_text(SUIT_DIR / f"example{index}.txt")
    blocks = re.findall(r"~~~\n([0-9a-fA-F\s]+?)~~~", text)
    return [bytes.fromhex("".join(block.split())) for block in blocks]


def envelope(index: int) -> bytes:
    return hex_blocks(index)[-1]


def readme_ids() -> tuple[str, str]:
    text = read_text(README)
    vendor = re.search(r"Vendor ID `([0-9a-f-]{36})`", text)
    klass = re.search(r"class ID `([0-9a-f-]{36})`", text)
    assert vendor is not None and klass is not None
    return vendor.group(1), klass.group(1)


def published_key() -> CoseKey:
    text = read_text(README)
    pem = re.search(r"-----BEGIN PUBLIC KEY-----.*?-----END PUBLIC KEY-----", text, re.S)
    assert pem is not None
    return CoseKey.from_pem(b"suit-examples", pem.group(0).encode())


@pytest.fixture(scope="module")
def key() -> CoseKey:
    return published_key()


@pytest.fixture(scope="module")
def ids() -> tuple[str, str]:
    return readme_ids()


def verify(index: int, key: CoseKey, ids: tuple[str, str], state: SuitState) -> SuitState:
    _, new_state = verify_envelope(
        envelope(index), [key], expected_vendor=ids[0], expected_class=ids[1], state=state
    )
    return new_state


EXAMPLES = range(6)


def test_readme_facts(key: CoseKey, ids: tuple[str, str]) -> None:
    assert key.alg == ALG_ES256
    assert ids == ("fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe", "1492af14-2569-5e48-bf42-9b2d51f2ab45")


@pytest.mark.parametrize("index", EXAMPLES)
def test_every_example_verifies_with_the_published_key(index: int, key: CoseKey) -> None:
    manifest = inspect_envelope(envelope(index), [key])
    assert manifest.sequence == index
    assert (manifest.vendor_id, manifest.class_id) == readme_ids()


def manifests(key: CoseKey) -> list[SuitManifest]:
    return [inspect_envelope(envelope(index), [key]) for index in EXAMPLES]


def test_extracted_contents(key: CoseKey) -> None:
    m0, m1, m2, m3, m4, m5 = manifests(key)
    for manifest in (m0, m1, m2, m4, m5):
        assert (manifest.image_digest, manifest.image_size) == (PLACEHOLDER, 34768)
    assert m0.components == ((b"\x00",),) and m0.uri is None
    assert m1.uri == "http://example.com/file.bin"
    # Example 2's install is severed; the envelope carries it and its digest matches.
    assert m2.uri == "http://example.com/very/long/path/to/file/file.bin"
    assert m2.reference_uri == "https://git.io/JJYoj"
    # Example 3 picks digest, size and URI per slot with try-each: none is extracted.
    assert (m3.image_digest, m3.image_size, m3.uri) == (None, None, None)
    assert m4.components == ((b"\x00",), (b"\x02",), (b"\x01",))
    assert m4.details[1].uri == "http://example.com/file.bin"
    assert (m4.details[2].image_digest, m4.details[2].image_size) == (PLACEHOLDER_2, 76834)
    assert m5.components == ((b"\x00",), (b"\x01",))
    assert [c.uri for c in m5.details] == [
        "http://example.com/file1.bin",
        "http://example.com/file2.bin",
    ]
    assert m5.details[1].vendor_id is None  # only component 0 sets and checks the ids
    assert all(manifest.chunk_digests == () for manifest in (m0, m1, m2, m3, m4, m5))


def test_processing_in_order_accepts_each_then_refuses_older(
    key: CoseKey, ids: tuple[str, str]
) -> None:
    state = SuitState()
    for index in EXAMPLES:
        state = verify(index, key, ids, state)
        assert state.highest == index
    for index in range(5):
        with pytest.raises(SuitRollback):
            verify(index, key, ids, state)
    with pytest.raises(SuitAlreadyInstalled):
        verify(5, key, ids, state)
    assert state == SuitState(highest=5)


@pytest.mark.parametrize("index", EXAMPLES)
@pytest.mark.parametrize("wrong", ["vendor", "class"])
def test_wrong_vendor_or_class_is_refused_before_any_download(
    index: int, wrong: str, key: CoseKey, ids: tuple[str, str]
) -> None:
    vendor, klass = (OTHER_ID, ids[1]) if wrong == "vendor" else (ids[0], OTHER_ID)
    downloads: list[int] = []

    def process(state: SuitState) -> None:
        manifest, _ = verify_envelope(
            envelope(index), [key], expected_vendor=vendor, expected_class=klass, state=state
        )
        downloads.append(manifest.image_size or 0)  # the agent would start fetching here

    with pytest.raises(SuitWrongDevice):
        process(SuitState())
    # Identity comes before anti-rollback: a state that would refuse the sequence
    # still reports the wrong device.
    with pytest.raises(SuitWrongDevice):
        process(SuitState(highest=5))
    assert downloads == []


@pytest.mark.parametrize("index", EXAMPLES)
def test_another_key_is_refused(index: int) -> None:
    stranger = CoseKey(
        kid=b"x", alg=ALG_ES256, key=ec.derive_private_key(7, ec.SECP256R1()).public_key()
    )
    with pytest.raises(SignatureInvalid):
        inspect_envelope(envelope(index), [stranger])
    with pytest.raises(UnknownKey):
        inspect_envelope(envelope(index), [])


@pytest.mark.parametrize("index", EXAMPLES)
def test_envelope_without_authentication_object_is_refused(index: int, key: CoseKey) -> None:
    unauthenticated = hex_blocks(index)[0]
    with pytest.raises(SuitMalformed, match="blocks"):
        inspect_envelope(unauthenticated, [key])


def test_example2_without_severable_members(key: CoseKey) -> None:
    blocks = hex_blocks(2)
    assert len(blocks) == 3
    stripped = inspect_envelope(blocks[1], [key])  # authenticated, members severed away
    assert stripped.sequence == 2
    assert stripped.uri is None
    full = inspect_envelope(blocks[2], [key])
    assert stripped.manifest_digest == full.manifest_digest


@pytest.mark.parametrize("member", [20, 23])
def test_example2_tampered_severable_member_is_refused(member: int, key: CoseKey) -> None:
    value = cbor.decode(envelope(2), allowed_tags=frozenset({107}))
    document = dict(value.value)
    original = document[member]
    document[member] = original[:-1] + bytes([original[-1] ^ 1])
    with pytest.raises(SuitDigestMismatch):
        inspect_envelope(cbor.encode(Tag(107, document)), [key])


@pytest.mark.parametrize("index", EXAMPLES)
def test_examples_reencode_byte_for_byte(index: int) -> None:
    # The examples are deterministic CBOR: our encoder reproduces them exactly.
    data = envelope(index)
    assert cbor.encode(cbor.decode(data, allowed_tags=frozenset({107}))) == data


@pytest.mark.parametrize("index", EXAMPLES)
def test_bit_flips_of_the_examples_are_refused(index: int, key: CoseKey) -> None:
    data = envelope(index)
    for bit in range(len(data) * 8):
        mutated = bytearray(data)
        mutated[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(ProtocolError) as caught:
            inspect_envelope(bytes(mutated), [key])
        assert isinstance(caught.value, (SuitError, CoseError)), caught.value


def test_as_json_for_example5(key: CoseKey) -> None:
    view = inspect_envelope(envelope(5), [key]).as_json()
    assert view["sequence"] == 5
    assert [component["id"] for component in view["components"]] == [["00"], ["01"]]
    assert view["components"][1]["image_size"] == 76834
