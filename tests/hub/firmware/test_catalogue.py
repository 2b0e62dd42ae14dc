"""The catalogue: uploads with signed envelopes, typed refusals, nothing stored half way."""

from __future__ import annotations

import hashlib
import os
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from hub.firmware import catalogue
from hub.firmware.models import FirmwarePackage
from protocols import suit
from protocols.cose import CoseKey
from protocols.errors import UnknownKey
from provisioning.signer import Ed25519Signer
from tests.hub.conftest import TenantKeys, make_tenant
from tests.hub.firmware.world import API, World


def _count(world: World) -> int:
    with world.factory() as s:
        return (
            s.scalar(
                select(func.count())
                .select_from(FirmwarePackage)
                .where(FirmwarePackage.tenant_id == world.tenant.tenant_id)
            )
            or 0
        )


def _blobs(world: World) -> list[str]:
    return [key for key, _ in world.store.list_blobs()]


def _nothing_stored(world: World, packages: int, blobs: list[str]) -> None:
    assert _count(world) == packages
    assert _blobs(world) == blobs
    tmp = world.store.root / "tmp"
    assert not tmp.exists() or not any(tmp.iterdir())


def test_upload_builds_a_signed_envelope_of_the_payload(world: World) -> None:
    payload = os.urandom(5000)
    package = world.package("1.0.0", payload, release_notes="first", chunk_size=1024)
    assert package["size"] == 5000
    assert package["sha256"] == hashlib.sha256(payload).hexdigest()
    assert (package["sequence"], package["chunk_size"], package["chunk_count"]) == (1, 1024, 5)
    assert package["required_product_id"] == world.product_id
    envelope = world.get(f"/firmware/packages/{package['id']}/envelope").content
    manifest = world.manifest(envelope)
    assert manifest.sequence == 1
    assert (manifest.vendor_id, manifest.class_id) == (world.vendor_uuid, world.class_uuid)
    assert manifest.image_size == 5000
    assert manifest.image_digest == hashlib.sha256(payload).digest()
    assert manifest.chunk_size == 1024 and manifest.chunk_count == 5
    assert manifest.uri == f"hub://firmware/packages/{package['id']}"
    assert manifest.manifest_digest.hex() == package["manifest_digest"]
    suit.verify_image(manifest, payload)
    for index in range(5):
        suit.verify_chunk(manifest, index, payload[index * 1024 : (index + 1) * 1024])
    # Signed by the firmware catalogue key, not by any other.
    with pytest.raises(UnknownKey):
        other = Ed25519Signer.generate()
        suit.inspect_envelope(envelope, [CoseKey.ed25519(other.kid, other.public_key_bytes())])
    assert world.payload_of(package) == payload


def test_an_envelope_is_refused_by_a_device_of_another_class_or_with_a_newer_image(
    world: World,
) -> None:
    package = world.package("1.0.0")
    envelope = world.get(f"/firmware/packages/{package['id']}/envelope").content
    key = [CoseKey.ed25519(world.signer.kid, world.signer.public_key_bytes())]
    with pytest.raises(suit.SuitWrongDevice):
        suit.verify_envelope(
            envelope,
            key,
            expected_vendor=world.vendor_uuid,
            expected_class=str(uuid.uuid4()),
            state=suit.SuitState(),
        )
    with pytest.raises(suit.SuitRollback):
        suit.verify_envelope(
            envelope,
            key,
            expected_vendor=world.vendor_uuid,
            expected_class=world.class_uuid,
            state=suit.SuitState(highest=2),
        )
    manifest, state = suit.verify_envelope(
        envelope,
        key,
        expected_vendor=world.vendor_uuid,
        expected_class=world.class_uuid,
        state=suit.SuitState(),
    )
    assert state.highest == manifest.sequence == 1


def test_sequence_numbers_grow_per_class_and_versions_only_go_up(world: World) -> None:
    first = world.package("1.0.0")
    second = world.package("1.1.0-rc.1")
    third = world.package("1.1.0")
    assert [first["sequence"], second["sequence"], third["sequence"]] == [1, 2, 3]
    listed = world.ok(world.get("/firmware/packages", device_class_id=world.class_id))
    assert [p["version"] for p in listed["items"]] == ["1.1.0", "1.1.0-rc.1", "1.0.0"]
    audit = world.ok(world.get("/audit", action="firmware.package.create", role="admin"))
    assert audit["total"] == 3


@pytest.mark.parametrize(
    ("version", "fields", "status", "code"),
    [
        ("1.0", {}, 422, "invalid_version"),
        ("v1.0.0", {}, 422, "invalid_version"),
        ("01.0.0", {}, 422, "invalid_version"),
        ("1.0.0", {"class_id": "no-such-class"}, 422, "unknown_device_class"),
        ("1.0.0", {"required_product_id": "no-such-product"}, 422, "unknown_product"),
        ("1.0.0", {"required_feature": "ota"}, 422, "unknown_feature"),
        ("1.0.0", {"required_product_id": "P", "required_feature": "nope"}, 422, "unknown_feature"),
        ("1.0.0", {"chunk_size": 512}, 422, "invalid_chunk_size"),
        ("1.0.0", {"chunk_size": 65536}, 422, "invalid_chunk_size"),
        ("1.0.0", {"chunk_size": "big"}, 422, "validation_failed"),
    ],
)
def test_bad_uploads_are_refused_with_typed_errors_and_store_nothing(
    world: World, version: str, fields: dict[str, Any], status: int, code: str
) -> None:
    fields = dict(fields)
    if fields.get("required_product_id") == "P":
        fields["required_product_id"] = world.product_id
    before = _blobs(world)
    response = world.upload(version, **fields)
    assert response.status_code == status, response.text
    assert response.json()["error"] == code
    _nothing_stored(world, 0, before)


def test_duplicate_and_older_versions_are_conflicts(world: World) -> None:
    world.package("2.0.0")
    blobs = _blobs(world)
    refusals = [
        ("2.0.0", "duplicate_version"),
        ("1.9.9", "version_not_newer"),
        ("2.0.0-rc.1", "version_not_newer"),
        ("2.0.0+build.7", "version_not_newer"),
    ]
    for version, code in refusals:
        response = world.upload(version)
        assert response.status_code == 409, response.text
        assert response.json()["error"] == code
    _nothing_stored(world, 1, blobs)


def test_payload_larger_than_the_cap_is_refused_and_nothing_is_left(world: World) -> None:
    world.app.state.firmware_max_bytes = 4096
    response = world.upload("1.0.0", os.urandom(4097))
    assert response.status_code == 413, response.text
    assert response.json()["error"] == "payload_too_large"
    # Even far above the cap: refused while streaming, before anything is kept.
    response = world.upload("1.0.0", os.urandom(200_000))
    assert response.status_code == 413
    _nothing_stored(world, 0, [])
    assert world.upload("1.0.0", os.urandom(4096), chunk_size=1024).status_code == 201


def test_empty_payload_and_missing_parts_are_refused(world: World) -> None:
    response = world.upload("1.0.0", b"")
    assert (response.status_code, response.json()["error"]) == (422, "empty_payload")
    no_file = world.client.post(
        API + "/firmware/packages",
        data={"device_class_id": world.class_id, "version": "1.0.0"},
        files={"other": ("x", b"1")},
        headers=world.headers(),
    )
    assert (no_file.status_code, no_file.json()["error"]) == (422, "validation_failed")
    json_body = world.post("/firmware/packages", {"version": "1.0.0"})
    assert json_body.status_code == 422
    _nothing_stored(world, 0, [])


def test_a_failed_commit_removes_the_blob(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy.orm import Session

    real_commit = Session.commit

    def failing_commit(self: Session) -> None:
        if any(isinstance(o, FirmwarePackage) for o in self.identity_map.values()):
            raise RuntimeError("database went away")
        real_commit(self)

    monkeypatch.setattr(Session, "commit", failing_commit)
    with pytest.raises(RuntimeError):
        world.upload("1.0.0")
    monkeypatch.undo()
    _nothing_stored(world, 0, [])


def test_a_signer_that_misbehaves_stores_nothing(world: World) -> None:
    class Broken(Ed25519Signer):
        def sign(self, data: bytes) -> bytes:
            return bytes(64)

    world.app.state.firmware_signer = Broken.generate()
    with pytest.raises(Exception, match="signature"):
        world.upload("1.0.0")
    _nothing_stored(world, 0, [])


def test_large_images_get_larger_chunks_so_the_envelope_fits_an_offer(world: World) -> None:
    world.app.state.firmware_max_bytes = 8 * 1024 * 1024
    package = world.package("1.0.0", os.urandom(1_200_000), chunk_size=None)
    assert package["chunk_size"] == 16384 and package["chunk_count"] == 74
    world.app.state.firmware_max_bytes = 32 * 1024 * 1024
    big = world.package("1.1.0", os.urandom(20 * 1024 * 1024), chunk_size=None)
    assert big["chunk_size"] == 32768
    envelope = world.get(f"/firmware/packages/{big['id']}/envelope").content
    assert len(envelope) <= 32 * 1024
    too_big = world.upload("1.2.0", os.urandom(30 * 1024 * 1024))
    assert (too_big.status_code, too_big.json()["error"]) == (413, "payload_too_large")
    assert _count(world) == 2


def test_roles_and_tenants(world: World, other_tenant: TenantKeys) -> None:
    assert world.upload("1.0.0", role="viewer").status_code == 403
    package = world.package("1.0.0")
    other = {"Authorization": f"Bearer {other_tenant.admin}"}
    for path in ("", "/envelope"):
        response = world.client.get(f"{API}/firmware/packages/{package['id']}{path}", headers=other)
        assert response.status_code == 404
    listed = world.client.get(f"{API}/firmware/packages", headers=other).json()
    assert listed["total"] == 0
    # Another tenant cannot upload for this tenant's class either.
    response = world.client.post(
        f"{API}/firmware/packages",
        data={"device_class_id": world.class_id, "version": "9.0.0"},
        files={"file": ("fw.bin", b"x" * 10, "application/octet-stream")},
        headers=other,
    )
    assert (response.status_code, response.json()["error"]) == (422, "unknown_device_class")


def test_orphan_sweep_removes_only_old_unreferenced_blobs(world: World) -> None:
    package = world.package("1.0.0")
    import io

    orphan = world.store.put(io.BytesIO(b"left behind by a crash"), max_size=100)
    tmp = world.store.root / "tmp"
    (tmp / "upload-stale").write_bytes(b"half")
    # File times are real times: the sweep compares them with the real clock.
    real_now = datetime.now(UTC)
    with world.factory() as s:
        assert catalogue.sweep_orphans(s, world.store, real_now) == 0  # too young
    later = real_now + timedelta(hours=2)
    with world.factory() as s:
        assert catalogue.sweep_orphans(s, world.store, later) == 2
    keys = _blobs(world)
    assert orphan.key not in keys
    assert world.payload_of(package)  # the referenced blob is still there


def test_other_tenants_class_cannot_be_confused(world: World, session_factory: Any) -> None:
    # A second tenant's package for its own class has its own sequence numbers.
    other = make_tenant(session_factory, world.clock.now)
    assert other.tenant_id != world.tenant.tenant_id
    assert world.package("1.0.0")["sequence"] == 1


def test_the_caller_is_checked_before_the_upload_body_is_read(world: World) -> None:
    # A body that is not even multipart: had it been parsed first, the answer would be 422.
    junk = {"content": b"x" * 4096, "headers": {"Content-Type": "application/octet-stream"}}
    anonymous = world.client.post(API + "/firmware/packages", **junk)  # type: ignore[arg-type]
    assert anonymous.status_code == 401
    viewer = world.client.post(
        API + "/firmware/packages",
        content=junk["content"],
        headers={**junk["headers"], **world.headers("viewer")},  # type: ignore[dict-item]
    )
    assert viewer.status_code == 403
