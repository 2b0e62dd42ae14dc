"""The agent's SUIT processor: the public SUIT examples, persisted anti-rollback, mutations."""

from __future__ import annotations

import dataclasses
import random

import pytest

from device_agent.errors import StateError
from device_agent.firmware.errors import (
    ChunkCorrupt,
    ChunkOutOfRange,
    ChunkSize,
    ForeignJob,
    OfferRefused,
)
from device_agent.firmware.install import Step
from device_agent.firmware.processor import (
    DeviceClass,
    check_chunk,
    check_installable,
    firmware_keys,
    range_bounds,
    split_range,
    verify_envelope,
    verify_offer,
)
from device_agent.firmware.records import ROLLBACK_FILE, OfferFile, RollbackStore
from device_agent.trust import initial_state
from protocols import suit
from protocols.firmware_messages import FirmwareChunk, FirmwareOffer, FirmwareReport
from protocols.messages import TrustAnchor
from tests.device_agent.firmware.fakes import (
    CHUNK,
    CLASS,
    NEW,
    OTHER,
    VENDOR,
    Device,
    FakeHub,
    envelope,
    job_id,
    public_key,
    settings,
)
from tests.protocols import test_suit_vectors as vectors

EXAMPLES = range(6)
needs_vectors = pytest.mark.skipif(
    not (vectors.SUIT_DIR / "example0.txt").is_file(),
    reason=f"SUIT examples not found at {vectors.SUIT_DIR}",
)
DEVICE = DeviceClass(VENDOR, CLASS)


@pytest.fixture(scope="module")
def example_key():
    return vectors.published_key()


@needs_vectors
def test_the_examples_ids_are_the_devices(example_key):
    assert vectors.readme_ids() == (VENDOR, CLASS)


@needs_vectors
@pytest.mark.parametrize("index", EXAMPLES)
def test_every_example_verifies_with_the_published_key(index, example_key):
    manifest = verify_envelope(
        vectors.envelope(index), [example_key], device=DEVICE, state=suit.SuitState()
    )
    assert manifest.sequence == index


@needs_vectors
def test_after_example5_is_confirmed_examples_0_to_4_are_refused_across_restarts(
    tmp_path, example_key
):
    store = RollbackStore(tmp_path)
    for index in EXAMPLES:
        manifest = verify_envelope(
            vectors.envelope(index), [example_key], device=DEVICE, state=store.state
        )
        assert store.advance(manifest.sequence)  # what a confirmation does
    reopened = RollbackStore(tmp_path)  # a restarted agent reads the file
    assert reopened.installed == 5
    for index in range(5):
        with pytest.raises(OfferRefused) as refused:
            verify_envelope(
                vectors.envelope(index), [example_key], device=DEVICE, state=reopened.state
            )
        assert refused.value.code == "suit_rollback"
    with pytest.raises(OfferRefused) as again:
        verify_envelope(vectors.envelope(5), [example_key], device=DEVICE, state=reopened.state)
    assert again.value.code == "suit_already_installed"
    assert not reopened.advance(3) and RollbackStore(tmp_path).installed == 5


@needs_vectors
@pytest.mark.parametrize("index", EXAMPLES)
@pytest.mark.parametrize("wrong", ["vendor", "class"])
def test_examples_for_another_vendor_or_class_are_refused_before_any_byte(
    tmp_path, index, wrong, example_key
):
    overrides = {"vendor_id": OTHER} if wrong == "vendor" else {"class_id": OTHER}
    hub = FakeHub()
    device = Device(tmp_path, hub, settings=settings(**overrides), keys=[example_key])
    device.provision()
    component = device.power_on()
    offer = FirmwareOffer(job_id(index + 1), vectors.envelope(index), CHUNK)
    device.exchange(component.on_message(offer, now=device.now) or [])
    assert [m.step for m in device.published if isinstance(m, FirmwareReport)] == ["failed"]
    assert (hub.reports[0].reason or "").startswith("suit_wrong_device")
    assert hub.requests == [] and not device.fw.slot_path("b").exists()
    assert component.step is Step.IDLE


@needs_vectors
@pytest.mark.parametrize("index", EXAMPLES)
def test_the_examples_verify_but_carry_no_chunk_digests_to_install(tmp_path, index, example_key):
    hub = FakeHub()
    device = Device(tmp_path, hub, keys=[example_key], factory_sequence=0)
    device.provision()
    component = device.power_on()
    offer = FirmwareOffer(job_id(index + 1), vectors.envelope(index), CHUNK)
    device.exchange(component.on_message(offer, now=device.now) or [])
    assert (hub.reports[0].reason or "").startswith("unsupported_manifest")
    assert hub.requests == []


def test_firmware_keys_come_from_the_firmware_anchors_only():
    raw = public_key().key.public_bytes_raw()  # type: ignore[union-attr]
    anchors = [
        TrustAnchor(kid=b"fw", alg=-8, key=raw, role="firmware"),
        TrustAnchor(kid=b"mf", alg=-8, key=bytes(32), role="manifest"),
    ]
    state = initial_state("dev-1", anchors)
    assert [key.kid for key in firmware_keys(state)] == [b"fw"]
    retired = initial_state("dev-1", anchors)
    retired = type(retired)(device_id="dev-1", anchors=retired.anchors, retired=frozenset({b"fw"}))
    assert firmware_keys(retired) == []


def offer_of(image: bytes = NEW, sequence: int = 2, chunk_size: int = CHUNK) -> FirmwareOffer:
    return FirmwareOffer(job_id(1), envelope(image, sequence, chunk_size=chunk_size), chunk_size)


def test_verify_offer_returns_the_target():
    verified = verify_offer(offer_of(), [public_key()], device=DEVICE, state=suit.SuitState(1))
    target = verified.target
    assert (target.job_id, target.sequence, target.size) == (job_id(1), 2, len(NEW))
    assert verified.chunk_count == 7 and verified.http_path is None


def test_mutated_envelopes_never_verify_as_something_else():
    original = offer_of()
    keys = [public_key()]
    reference = verify_offer(original, keys, device=DEVICE, state=suit.SuitState()).manifest
    rng = random.Random(4)
    data = original.envelope
    accepted = 0
    for trial in range(400):
        mutated = bytearray(data)
        if trial % 4 == 0:
            mutated = mutated[: rng.randrange(1, len(data))]
        else:
            bit = rng.randrange(len(data) * 8)
            mutated[bit // 8] ^= 1 << (bit % 8)
        offer = FirmwareOffer(original.job_id, bytes(mutated), CHUNK)
        try:
            verified = verify_offer(offer, keys, device=DEVICE, state=suit.SuitState())
        except OfferRefused as exc:
            assert exc.code
            continue
        # only an unsigned-header change (docs/suit.md section 7) may still verify
        assert verified.manifest == reference
        accepted += 1
    assert accepted <= 4


def test_an_envelope_without_image_or_with_several_components_is_not_installable():
    manifest = verify_offer(offer_of(), [public_key()], device=DEVICE, state=suit.SuitState())
    bare = manifest.manifest
    with pytest.raises(OfferRefused, match="components"):
        check_installable(dataclasses.replace(bare, components=((b"\0",), (b"\1",))), CHUNK)
    with pytest.raises(OfferRefused, match="image digest"):
        check_installable(dataclasses.replace(bare, image_digest=None), CHUNK)
    with pytest.raises(OfferRefused, match="chunk digests"):
        check_installable(dataclasses.replace(bare, chunk_digests=()), CHUNK)


def test_check_chunk_refusals():
    verified = verify_offer(offer_of(), [public_key()], device=DEVICE, state=suit.SuitState())
    good = FirmwareChunk(job_id(1), 0, NEW[:CHUNK])
    check_chunk(verified, good)
    cases = [
        (FirmwareChunk(job_id(2), 0, NEW[:CHUNK]), ForeignJob),
        (FirmwareChunk(job_id(1), 7, b"x"), ChunkOutOfRange),
        (FirmwareChunk(job_id(1), 0, NEW[: CHUNK + 1]), ChunkSize),
        (FirmwareChunk(job_id(1), 6, NEW[6 * CHUNK : -1]), ChunkSize),
        (FirmwareChunk(job_id(1), 1, NEW[:CHUNK]), ChunkCorrupt),
    ]
    for chunk, error in cases:
        with pytest.raises(error):
            check_chunk(verified, chunk)


def test_split_range_verifies_every_chunk_and_the_length():
    manifest = verify_offer(
        offer_of(), [public_key()], device=DEVICE, state=suit.SuitState()
    ).manifest
    assert range_bounds(manifest, 5, 16) == (5 * CHUNK, len(NEW) - 1)
    chunks = split_range(manifest, 5, 16, NEW[5 * CHUNK :])
    assert [index for index, _ in chunks] == [5, 6]
    with pytest.raises(ChunkSize, match="larger than declared"):
        split_range(manifest, 5, 16, NEW[5 * CHUNK :] + b"!")
    with pytest.raises(ChunkSize, match="truncated"):
        split_range(manifest, 0, 2, NEW[: 2 * CHUNK - 1])
    with pytest.raises(ChunkOutOfRange):
        split_range(manifest, 7, 1, b"x")
    with pytest.raises(ChunkCorrupt):
        split_range(manifest, 0, 2, NEW[CHUNK : 3 * CHUNK])


def test_records_refuse_corrupt_files(tmp_path):
    (tmp_path / ROLLBACK_FILE).write_bytes(b"\xff\x00")
    with pytest.raises(StateError, match="refusing"):
        RollbackStore(tmp_path)
    offers = OfferFile(tmp_path)
    assert offers.load() is None
    offers.path.write_bytes(b"\xa1\x00")
    with pytest.raises(StateError):
        offers.load()
    offers.save(offer_of())
    assert offers.load() == offer_of()
