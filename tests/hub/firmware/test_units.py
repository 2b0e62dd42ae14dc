"""Small pure pieces: blob store, entitlement gate, chunk sizes, PEM keys."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hub.entitlements.effective import FeatureDef, Grant
from hub.entitlements.grants import DeviceGrants
from hub.entitlements.models import Entitlement
from hub.firmware.blobs import LocalBlobStore
from hub.firmware.envelope import (
    chunk_size_candidates,
    keys_from_pem,
    max_chunk_size,
    max_image_size,
)
from hub.firmware.errors import BlobError, InvalidChunkSize, PackageTooLarge
from hub.firmware.gate import Gate, PassCache, passes
from protocols.cose import ALG_ES256
from protocols.errors import CoseError

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def test_blob_store_round_trip_and_ranges(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    data = bytes(range(256)) * 40
    info = store.put(io.BytesIO(data), max_size=len(data))
    assert info.size == len(data) and len(info.key) == 32
    assert store.read_range(info.key, 0, len(data)) == data
    assert store.read_range(info.key, 100, 300) == data[100:300]
    assert b"".join(store.iter_range(info.key, 5, 5)) == b""
    assert [key for key, _ in store.list_blobs()] == [info.key]
    for start, end in ((0, len(data) + 1), (10, 5), (-1, 3)):
        with pytest.raises(BlobError):
            store.read_range(info.key, start, end)
    store.delete(info.key)
    store.delete(info.key)  # already gone: fine
    with pytest.raises(BlobError):
        store.read_range(info.key, 0, 1)


def test_blob_keys_cannot_escape_the_store(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    (tmp_path / "secret").write_bytes(b"x")
    for key in ("../secret", "/etc/passwd", "A" * 32, "", "0" * 31):
        with pytest.raises(BlobError):
            store.read_range(key, 0, 1)


def test_blob_over_the_cap_leaves_nothing(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    with pytest.raises(PackageTooLarge):
        store.put(io.BytesIO(b"x" * 3_000_000), max_size=2_000_000)
    assert list(store.list_blobs()) == []
    assert list((tmp_path / "tmp").iterdir()) == []


def _grants(
    *pairs: tuple[str, Grant], catalog: dict[str, FeatureDef] | None = None
) -> DeviceGrants:
    return DeviceGrants(
        pairs=[(Entitlement(product_id=product), grant) for product, grant in pairs],
        catalog={"ota": FeatureDef(key="ota", kind="flag")} if catalog is None else catalog,
    )


def _grant(**kw: object) -> Grant:
    fields: dict[str, object] = {
        "license_model": "subscription",
        "status": "active",
        "starts_at": NOW - timedelta(days=1),
        "ends_at": NOW + timedelta(days=1),
        "features": frozenset({"ota"}),
    }
    fields.update(kw)
    return Grant(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("grants", "gate", "expected"),
    [
        (_grants(), Gate(), True),
        (_grants(), Gate("P"), False),
        (_grants(("P", _grant())), Gate("P"), True),
        (_grants(("Q", _grant())), Gate("P"), False),
        (_grants(("P", _grant(status="suspended"))), Gate("P"), False),
        (_grants(("P", _grant(ends_at=NOW))), Gate("P"), False),
        (_grants(("P", _grant(ends_at=NOW, grace_seconds=60))), Gate("P"), True),
        (_grants(("P", _grant(starts_at=NOW + timedelta(seconds=1)))), Gate("P"), False),
        (_grants(("P", _grant())), Gate("P", "ota"), True),
        (_grants(("P", _grant(overrides={"ota": {"enabled": False}}))), Gate("P", "ota"), False),
        (_grants(("P", _grant(features=frozenset()))), Gate("P", "ota"), False),
        (_grants(("P", _grant()), catalog={}), Gate("P", "ota"), False),
        # The feature must come from the required product's grants.
        (_grants(("P", _grant(features=frozenset())), ("Q", _grant())), Gate("P", "ota"), False),
        (_grants(("P", _grant(license_model="floating"))), Gate("P"), False),  # no seat held
        (_grants(("P", _grant(license_model="floating", seat_held=True))), Gate("P"), True),
    ],
)
def test_gate(grants: DeviceGrants, gate: Gate, expected: bool) -> None:
    assert passes(grants, gate, NOW) is expected


def test_chunk_sizes_follow_the_payload_cap() -> None:
    assert chunk_size_candidates(None, 64 * 1024) == [16384, 32768]
    assert chunk_size_candidates(None, 8 * 1024) == [8 * 1024 - 128]
    assert chunk_size_candidates(4096, 64 * 1024) == [4096]
    assert max_chunk_size(16 * 1024) == 16 * 1024 - 128
    for requested, cap in ((1023, 65536), (32769, 65536), (16384, 16384)):
        with pytest.raises(InvalidChunkSize):
            chunk_size_candidates(requested, cap)
    with pytest.raises(InvalidChunkSize):
        chunk_size_candidates(None, 1024)
    assert 28 * 1024 * 1024 <= max_image_size(64 * 1024) < 30 * 1024 * 1024


def test_keys_from_pem() -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    public = ec_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private = ec_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert keys_from_pem(public)[0].alg == ALG_ES256
    assert keys_from_pem(private)[0].kid == keys_from_pem(public)[0].kid
    for bad in (
        b"",
        b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        b"PRIVATE KEY junk",
    ):
        with pytest.raises(CoseError):
            keys_from_pem(bad)


T0 = datetime(2030, 1, 1, tzinfo=UTC)


def test_pass_cache_trusts_a_pass_for_its_ttl_only() -> None:
    cache = PassCache(timedelta(seconds=1))
    assert not cache.passed("d1", "job-a", T0)
    cache.note("d1", "job-a", T0)
    assert cache.passed("d1", "job-a", T0 + timedelta(seconds=0.999))
    assert not cache.passed("d1", "job-a", T0 + timedelta(seconds=1))
    assert not cache.passed("d1", "job-b", T0)  # per (device, job)
    assert not cache.passed("d2", "job-a", T0)
    assert not cache.passed("d1", "job-a", T0 - timedelta(seconds=1))  # a clock stepped back


def test_pass_cache_with_zero_ttl_remembers_nothing_and_is_bounded() -> None:
    off = PassCache(timedelta(0))
    off.note("d1", "job-a", T0)
    assert not off.passed("d1", "job-a", T0)
    small = PassCache(timedelta(seconds=10), max_entries=2)
    small.note("d1", "j", T0)
    small.note("d2", "j", T0 + timedelta(seconds=5))
    small.note("d3", "j", T0 + timedelta(seconds=11))  # full: d1 has expired and goes
    later = T0 + timedelta(seconds=11)
    assert [small.passed(d, "j", later) for d in ("d1", "d2", "d3")] == [False, True, True]
    small.note("d4", "j", later)  # full, nothing expired: the oldest pass (d2) goes, only it
    assert [small.passed(d, "j", later) for d in ("d2", "d3", "d4")] == [False, True, True]
    small.note("d3", "j", later)  # noted again: now the newest
    small.note("d5", "j", later)
    assert [small.passed(d, "j", later) for d in ("d3", "d4", "d5")] == [True, False, True]
    with pytest.raises(ValueError):
        PassCache(timedelta(seconds=-1))
