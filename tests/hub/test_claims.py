from __future__ import annotations

import secrets
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from hub.audit.models import AuditEvent
from hub.broker.passwords import verify_password
from hub.errors import ClaimRefused
from hub.registry import service
from hub.registry.claims import handle_claim
from hub.registry.models import ClaimNonce, Device, DeviceCredential
from protocols.messages import ClaimRequest
from tests.hub.conftest import Clock
from tests.hub.fleet import (
    ANCHORS,
    CLIENT_ID,
    POLICY,
    SKEW,
    Fleet,
    claim_request,
    new_key,
    raw,
    snapshot,
)


@pytest.fixture
def fleet(session_factory: sessionmaker[Session], clock: Clock) -> Fleet:
    return Fleet.create(session_factory, clock.now)


def refuse(
    fleet: Fleet,
    request: ClaimRequest,
    watched: list[str],
    *,
    now: datetime | None = None,
    client_id: str = CLIENT_ID,
) -> ClaimRefused:
    """Run a claim that must be refused; the watched devices must not change.

    The session is committed after the refusal, so anything the claim had
    written before refusing would persist and show up in the snapshot.
    """
    before = {device_id: snapshot(fleet.factory, device_id) for device_id in watched}
    with fleet.factory() as s:
        with pytest.raises(ClaimRefused) as info:
            handle_claim(
                s, client_id=client_id, request=request, now=now or fleet.now, policy=POLICY
            )
        s.commit()
    after = {device_id: snapshot(fleet.factory, device_id) for device_id in watched}
    assert after == before
    return info.value


# ---------------------------------------------------------------- accepted


def test_token_claim_accepted(fleet: Fleet) -> None:
    device_id = fleet.device("SN-T1")
    token, _ = fleet.batch(["SN-T1"])
    key = new_key()
    nonce = secrets.token_bytes(24)
    accepted = fleet.claim(
        claim_request(key, serial="SN-T1", token=token, ts=fleet.ts, nonce=nonce)
    )
    assert accepted.device_id == device_id
    assert accepted.mqtt_username == device_id
    assert accepted.anchors == ANCHORS
    assert accepted.server_time == fleet.ts
    with fleet.factory() as s:
        device = s.get_one(Device, device_id)
        assert device.status == "claimed"
        assert device.claimed_at == fleet.now
        assert device.public_key == raw(key)
        assert device.public_key_fingerprint == service.sha256_hex(raw(key))
        credential = s.get_one(DeviceCredential, device_id)
        assert credential.username == device_id
        assert accepted.mqtt_password not in credential.password_hash
        assert verify_password(accepted.mqtt_password, credential.password_hash)
        assert not verify_password(accepted.mqtt_password + "x", credential.password_hash)
        assert s.get_one(ClaimNonce, nonce.hex()).device_id == device_id
        events = list(
            s.scalars(
                select(AuditEvent).where(
                    AuditEvent.action == "claim.accepted", AuditEvent.target_id == device_id
                )
            )
        )
    assert len(events) == 1
    event = events[0]
    assert (event.tenant_id, event.actor, event.outcome) == (
        fleet.tenant_id,
        f"device:{device_id}",
        "ok",
    )
    assert event.detail == {"serial": "SN-T1", "method": "token"}
    assert token not in str(event.detail) and accepted.mqtt_password not in str(event.detail)


def test_key_claim_with_preregistered_key_accepted(fleet: Fleet) -> None:
    key = new_key()
    device_id = fleet.device("SN-K1", public_key=raw(key))
    accepted = fleet.claim(claim_request(key, serial="SN-K1", method="key", ts=fleet.ts))
    assert accepted.device_id == device_id
    after = snapshot(fleet.factory, device_id)
    assert after["status"] == "claimed"
    assert after["public_key"] == raw(key)
    assert after["credential"]
    assert after["accepted"] == 1
    with fleet.factory() as s:
        credential = s.get_one(DeviceCredential, device_id)
        assert verify_password(accepted.mqtt_password, credential.password_hash)


def test_token_claim_of_preregistered_device_with_its_own_key_accepted(fleet: Fleet) -> None:
    key = new_key()
    device_id = fleet.device("SN-TK", public_key=raw(key))
    token, _ = fleet.batch(["SN-TK"])
    accepted = fleet.claim(claim_request(key, serial="SN-TK", token=token, ts=fleet.ts))
    assert accepted.device_id == device_id


# ---------------------------------------------------------------- stale_request


@pytest.mark.parametrize("offset", [-SKEW - 1, SKEW + 1, -10 * SKEW, 10 * SKEW])
def test_stale_request(fleet: Fleet, offset: int) -> None:
    device_id = fleet.device("SN-S")
    token, _ = fleet.batch(["SN-S"])
    request = claim_request(new_key(), serial="SN-S", token=token, ts=fleet.ts + offset)
    assert refuse(fleet, request, [device_id]).code == "stale_request"


@pytest.mark.parametrize("offset", [-SKEW, SKEW])
def test_timestamp_exactly_at_the_skew_boundary_accepted(fleet: Fleet, offset: int) -> None:
    device_id = fleet.device("SN-B")
    token, _ = fleet.batch(["SN-B"])
    request = claim_request(new_key(), serial="SN-B", token=token, ts=fleet.ts + offset)
    assert fleet.claim(request).device_id == device_id


def test_stale_request_is_checked_with_the_hub_clock(fleet: Fleet) -> None:
    # The same request is fine now and stale once the hub's clock moved on.
    device_id = fleet.device("SN-SC")
    token, _ = fleet.batch(["SN-SC"])
    request = claim_request(new_key(), serial="SN-SC", token=token, ts=fleet.ts)
    later = fleet.now + timedelta(seconds=SKEW + 1)
    assert refuse(fleet, request, [device_id], now=later).code == "stale_request"
    assert fleet.claim(request).device_id == device_id


# ---------------------------------------------------------------- bad_proof


def test_bad_proof_wrong_signature(fleet: Fleet) -> None:
    device_id = fleet.device("SN-P1")
    token, _ = fleet.batch(["SN-P1"])
    # Signed by one key, claiming another public key.
    request = claim_request(
        new_key(), serial="SN-P1", token=token, ts=fleet.ts, pubkey=raw(new_key())
    )
    assert refuse(fleet, request, [device_id]).code == "bad_proof"


def test_bad_proof_tampered_field(fleet: Fleet) -> None:
    device_id = fleet.device("SN-P2")
    token, _ = fleet.batch(["SN-P2"])
    request = claim_request(new_key(), serial="SN-P2", token=token, ts=fleet.ts)
    tampered = ClaimRequest(
        serial=request.serial,
        method=request.method,
        pubkey=request.pubkey,
        nonce=secrets.token_bytes(16),
        ts=request.ts,
        sig=request.sig,
        token=request.token,
    )
    assert refuse(fleet, tampered, [device_id]).code == "bad_proof"


def test_bad_proof_signed_for_another_client_id(fleet: Fleet) -> None:
    device_id = fleet.device("SN-P3")
    token, _ = fleet.batch(["SN-P3"])
    request = claim_request(
        new_key(), serial="SN-P3", token=token, ts=fleet.ts, client_id="claim-someoneelse"
    )
    assert refuse(fleet, request, [device_id]).code == "bad_proof"
    # The same request is accepted from the session it was signed for.
    with fleet.factory() as s:
        accepted = handle_claim(
            s, client_id="claim-someoneelse", request=request, now=fleet.now, policy=POLICY
        )
        s.commit()
    assert accepted.device_id == device_id


def test_bad_proof_token_claim_with_other_key_than_preregistered(fleet: Fleet) -> None:
    registered = new_key()
    device_id = fleet.device("SN-P4", public_key=raw(registered))
    token, _ = fleet.batch(["SN-P4"])
    request = claim_request(new_key(), serial="SN-P4", token=token, ts=fleet.ts)
    refused = refuse(fleet, request, [device_id])
    assert refused.code == "bad_proof"
    assert (refused.tenant_id, refused.target) == (fleet.tenant_id, device_id)


# ---------------------------------------------------------------- bad_token


def test_bad_token_variants(
    fleet: Fleet, session_factory: sessionmaker[Session], clock: Clock
) -> None:
    device_id = fleet.device("SN-BT")
    outsider = fleet.device("SN-OUT")  # same tenant, not in the batch
    token, batch_id = fleet.batch(["SN-BT"])
    _, _, secret = token.split("_", 2)
    other = Fleet.create(session_factory, clock.now)
    foreign = other.device("SN-FOREIGN")  # exists only in another tenant
    other_token, _ = other.batch(["SN-FOREIGN"])
    watched = [device_id, outsider, foreign]
    cases = [
        ("SN-BT", "garbage"),
        ("SN-BT", "hubc_only-two"),
        ("SN-BT", f"hubk_{batch_id}_{secret}"),  # an API-key-shaped token
        ("SN-BT", f"hubc_{secrets.token_hex(8)}_{secret}"),  # unknown batch id
        ("SN-BT", f"hubc_{batch_id}_{secret}x"),  # wrong secret
        ("SN-BT", other_token),  # another tenant's valid token
        ("SN-OUT", token),  # serial not in the batch
        ("SN-FOREIGN", token),  # serial of another tenant
        ("SN-NOBODY", token),  # serial nobody has
    ]
    for serial, presented in cases:
        request = claim_request(new_key(), serial=serial, token=presented, ts=fleet.ts)
        assert refuse(fleet, request, watched).code == "bad_token", (serial, presented)


def test_bad_token_when_token_missing(fleet: Fleet) -> None:
    device_id = fleet.device("SN-NT")
    fleet.batch(["SN-NT"])
    request = claim_request(new_key(), serial="SN-NT", token=None, ts=fleet.ts)
    assert refuse(fleet, request, [device_id]).code == "bad_token"


# ---------------------------------------------------------------- token life


def test_token_revoked(fleet: Fleet) -> None:
    device_id = fleet.device("SN-RV")
    token, batch_id = fleet.batch(["SN-RV"])
    with fleet.factory() as s:
        service.revoke_claim_batch(
            s, tenant_id=fleet.tenant_id, actor="test", now=fleet.now, batch_id=batch_id
        )
        s.commit()
    request = claim_request(new_key(), serial="SN-RV", token=token, ts=fleet.ts)
    assert refuse(fleet, request, [device_id]).code == "token_revoked"


def test_token_expired_exactly_at_expires_at(fleet: Fleet) -> None:
    device_id = fleet.device("SN-EX")
    token, _ = fleet.batch(["SN-EX"], ttl_seconds=600)
    key = new_key()
    at_expiry = fleet.now + timedelta(seconds=600)
    ts = int(at_expiry.timestamp())
    request = claim_request(key, serial="SN-EX", token=token, ts=ts)
    assert refuse(fleet, request, [device_id], now=at_expiry).code == "token_expired"
    much_later = at_expiry + timedelta(days=30)
    late = claim_request(key, serial="SN-EX", token=token, ts=int(much_later.timestamp()))
    assert refuse(fleet, late, [device_id], now=much_later).code == "token_expired"
    # One second before expiry it is still good.
    just_before = at_expiry - timedelta(seconds=1)
    request = claim_request(key, serial="SN-EX", token=token, ts=int(just_before.timestamp()))
    assert fleet.claim(request, now=just_before).device_id == device_id


# ---------------------------------------------------------------- unknown_device


def test_unknown_device_with_unregistered_key(fleet: Fleet) -> None:
    registered = new_key()
    device_id = fleet.device("SN-U1", public_key=raw(registered))
    request = claim_request(new_key(), serial="SN-U1", method="key", ts=fleet.ts)
    assert refuse(fleet, request, [device_id]).code == "unknown_device"


def test_unknown_device_with_key_of_another_serial(fleet: Fleet) -> None:
    key_a, key_b = new_key(), new_key()
    device_a = fleet.device("SN-U2A", public_key=raw(key_a))
    device_b = fleet.device("SN-U2B", public_key=raw(key_b))
    request = claim_request(key_a, serial="SN-U2B", method="key", ts=fleet.ts)
    assert refuse(fleet, request, [device_a, device_b]).code == "unknown_device"


def test_unknown_device_for_device_without_registered_key(fleet: Fleet) -> None:
    device_id = fleet.device("SN-U3")  # token-only device
    request = claim_request(new_key(), serial="SN-U3", method="key", ts=fleet.ts)
    assert refuse(fleet, request, [device_id]).code == "unknown_device"


# ---------------------------------------------------------------- claimability


def test_already_claimed(fleet: Fleet) -> None:
    device_id, password = fleet.claimed_device("SN-AC")
    token, _ = fleet.batch(["SN-AC"])
    with fleet.factory() as s:
        stored_hash = s.get_one(DeviceCredential, device_id).password_hash
    request = claim_request(new_key(), serial="SN-AC", token=token, ts=fleet.ts)
    refused = refuse(fleet, request, [device_id])
    assert refused.code == "already_claimed"
    assert (refused.tenant_id, refused.target) == (fleet.tenant_id, device_id)
    with fleet.factory() as s:
        assert s.get_one(DeviceCredential, device_id).password_hash == stored_hash
    assert verify_password(password, stored_hash)


def test_reclaim_with_own_key_reissues_the_credential(fleet: Fleet) -> None:
    # The answer to the first claim was lost: the device must not be stranded.
    key = new_key()
    device_id = fleet.device("SN-AK", public_key=raw(key))
    first = claim_request(key, serial="SN-AK", method="key", ts=fleet.ts)
    old = fleet.claim(first)
    before = snapshot(fleet.factory, device_id)
    again = fleet.claim(claim_request(key, serial="SN-AK", method="key", ts=fleet.ts))
    assert again.device_id == device_id and again.mqtt_password != old.mqtt_password
    with fleet.factory() as s:
        stored = s.get_one(DeviceCredential, device_id).password_hash
        actions = s.scalars(
            select(AuditEvent.action).where(AuditEvent.target_id == device_id)
        ).all()
    assert verify_password(again.mqtt_password, stored)
    assert not verify_password(old.mqtt_password, stored)
    after = snapshot(fleet.factory, device_id)
    assert (after["status"], after["claimed_at"], after["public_key"]) == (
        before["status"],
        before["claimed_at"],
        before["public_key"],
    )
    assert "claim.reissued" in actions
    # The very same request replayed is still refused.
    assert refuse(fleet, first, [device_id]).code == "replayed_nonce"


def test_device_disabled(fleet: Fleet) -> None:
    device_id = fleet.device("SN-DIS")
    token, _ = fleet.batch(["SN-DIS"])
    fleet.set_status(device_id, "disabled")
    request = claim_request(new_key(), serial="SN-DIS", token=token, ts=fleet.ts)
    refused = refuse(fleet, request, [device_id])
    assert refused.code == "device_disabled"
    assert refused.target == device_id


def test_device_disabled_after_reset(fleet: Fleet) -> None:
    device_id, _ = fleet.claimed_device("SN-DIS2")
    fleet.set_status(device_id, "disabled")
    fleet.reset_claim(device_id)
    token, _ = fleet.batch(["SN-DIS2"])
    request = claim_request(new_key(), serial="SN-DIS2", token=token, ts=fleet.ts)
    assert refuse(fleet, request, [device_id]).code == "device_disabled"


def test_key_in_use(fleet: Fleet) -> None:
    key = new_key()
    holder = fleet.device("SN-KH", public_key=raw(key))
    device_id = fleet.device("SN-KU")
    token, _ = fleet.batch(["SN-KU"])
    request = claim_request(key, serial="SN-KU", token=token, ts=fleet.ts)
    refused = refuse(fleet, request, [holder, device_id])
    assert refused.code == "key_in_use"
    assert refused.target == device_id


def test_key_in_use_by_a_claimed_device(fleet: Fleet) -> None:
    key = new_key()
    first = fleet.device("SN-KC1")
    second = fleet.device("SN-KC2")
    token, _ = fleet.batch(["SN-KC1", "SN-KC2"])
    fleet.claim(claim_request(key, serial="SN-KC1", token=token, ts=fleet.ts))
    request = claim_request(key, serial="SN-KC2", token=token, ts=fleet.ts)
    assert refuse(fleet, request, [first, second]).code == "key_in_use"


def test_replayed_nonce_after_reset_claim(fleet: Fleet) -> None:
    key = new_key()
    device_id = fleet.device("SN-RN", public_key=raw(key))
    nonce = secrets.token_bytes(16)
    request = claim_request(key, serial="SN-RN", method="key", ts=fleet.ts, nonce=nonce)
    fleet.claim(request)
    fleet.reset_claim(device_id)
    assert snapshot(fleet.factory, device_id)["status"] == "registered"
    # The identical request, and a freshly signed one reusing the nonce.
    assert refuse(fleet, request, [device_id]).code == "replayed_nonce"
    later = fleet.now + timedelta(seconds=60)
    again = claim_request(key, serial="SN-RN", method="key", ts=int(later.timestamp()), nonce=nonce)
    assert refuse(fleet, again, [device_id], now=later).code == "replayed_nonce"
    fresh = claim_request(key, serial="SN-RN", method="key", ts=fleet.ts)
    assert fleet.claim(fresh).device_id == device_id


def test_replayed_nonce_across_devices(fleet: Fleet) -> None:
    nonce = secrets.token_bytes(32)
    fleet.device("SN-N1")
    second = fleet.device("SN-N2")
    token, _ = fleet.batch(["SN-N1", "SN-N2"])
    fleet.claim(claim_request(new_key(), serial="SN-N1", token=token, ts=fleet.ts, nonce=nonce))
    request = claim_request(new_key(), serial="SN-N2", token=token, ts=fleet.ts, nonce=nonce)
    assert refuse(fleet, request, [second]).code == "replayed_nonce"


def test_bad_method(fleet: Fleet) -> None:
    key = new_key()
    device_id = fleet.device("SN-BM", public_key=raw(key))
    token, _ = fleet.batch(["SN-BM"])
    request = claim_request(key, serial="SN-BM", method="magic", token=token, ts=fleet.ts)
    assert refuse(fleet, request, [device_id]).code == "bad_method"
