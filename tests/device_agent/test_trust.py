"""The agent's pure trust core: manifests, key rotation, effective features."""

import dataclasses
import hashlib
import random

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from device_agent.errors import AgentError
from device_agent.trust import (
    BadSignature,
    Expired,
    Malformed,
    Rollback,
    TrustedState,
    TrustError,
    WrongDevice,
    accept_manifest,
    accept_rotation,
    effective_features,
    initial_state,
    inspect_manifest,
    observe_clock,
)
from protocols import cbor, cose
from protocols.manifest import FeatureEntry, FeatureManifest, encode_manifest, sign_manifest
from protocols.messages import TrustAnchor
from protocols.rotation import RotationDocument, sign_rotation

DEV = "dev-00000000000000000001"
OTHER_DEV = "dev-00000000000000000002"
T0 = 1_800_000_000
HOUR = 3600
DAY = 86_400
LEASE = 30 * DAY
FEATURES = {
    "camera.hdr": FeatureEntry(enabled=True),
    "users": FeatureEntry(enabled=True, limit=10),
    "api-calls": FeatureEntry(enabled=True, cap=100, period="day", overage="block"),
    "legacy": FeatureEntry(enabled=False),
}


class Key:
    """A hub signing key with the kid the hub derives (sha256 prefix)."""

    def __init__(self, seed: int) -> None:
        self.private = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
        self.public = self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.kid = hashlib.sha256(self.public).digest()[:8]

    def anchor(self, role="manifest"):
        return TrustAnchor(kid=self.kid, alg=cose.ALG_EDDSA, key=self.public, role=role)

    def sign(self, data):
        return self.private.sign(data)


HUB, NEXT, THIRD, ATTACKER, FIRMWARE = (Key(n) for n in (1, 2, 3, 4, 5))


def issued(seq):
    return T0 + seq * HOUR


def manifest(seq, *, device=DEV, issued_at=None, lease=LEASE, features=None):
    at = issued(seq) if issued_at is None else issued_at
    return FeatureManifest(
        device_id=device,
        seq=seq,
        issued_at=at,
        not_after=at + lease,
        features=dict(FEATURES if features is None else features),
    )


def signed(seq, *, key=HUB, kid=None, **changes):
    return sign_manifest(manifest(seq, **changes), kid=kid or key.kid, sign=key.sign)


def rotation(seq, *, by=HUB, new=(NEXT,), retired=(), issued_at=T0, role="manifest"):
    doc = RotationDocument(
        role=role,
        seq=seq,
        anchors=tuple(k.anchor(role) for k in new),
        retired=tuple(k.kid for k in retired),
        issued_at=issued_at,
    )
    return sign_rotation(doc, kid=by.kid, sign=by.sign)


def fresh():
    return initial_state(DEV, [HUB.anchor(), FIRMWARE.anchor("firmware")])


def holding(seq=5):
    """A state that has accepted manifest ``seq`` (signed by HUB)."""
    return accept_manifest(fresh(), signed(seq), now=issued(seq)).state


def flip_bit(data, bit):
    mutated = bytearray(data)
    mutated[bit // 8] ^= 1 << (bit % 8)
    return bytes(mutated)


# --- the table of manifest cases ------------------------------------------------------


def _bad_signature():
    data = signed(6)
    return flip_bit(data, (len(data) - 10) * 8)


def _unknown_version():
    doc = cbor.decode(encode_manifest(manifest(6)))
    doc[0] = 2
    return cose.sign1(cbor.encode(doc), kid=HUB.kid, sign=HUB.sign)


def _oversize():
    features = {f"f{i:03d}".ljust(64, "x"): FEATURES["api-calls"] for i in range(256)}
    doc = cbor.decode(encode_manifest(manifest(6, features=features)))
    doc[99] = "x" * 20_000  # an unknown key: only the size is wrong
    return cose.sign1(cbor.encode(doc), kid=HUB.kid, sign=HUB.sign)


CASES = [
    # (name, data, now, expected error or status)
    ("valid", lambda: signed(6), issued(6), "accepted"),
    ("same bytes again", lambda: signed(5), issued(6), "unchanged"),
    ("bad signature", _bad_signature, issued(6), BadSignature),
    ("signed by another key", lambda: signed(6, key=ATTACKER), issued(6), BadSignature),
    ("another key under our kid", lambda: signed(6, key=ATTACKER, kid=HUB.kid), 0, BadSignature),
    ("signed by the firmware key", lambda: signed(6, key=FIRMWARE), issued(6), BadSignature),
    ("for another device", lambda: signed(6, device=OTHER_DEV), issued(6), WrongDevice),
    ("older sequence", lambda: signed(4), issued(6), Rollback),
    ("equal sequence, other content", lambda: signed(5, lease=LEASE + 1), issued(6), Rollback),
    ("expired", lambda: signed(6, lease=DAY), issued(6) + DAY, Expired),
    ("expired long ago", lambda: signed(6, lease=DAY), issued(6) + 40 * DAY, Expired),
    ("unknown version", _unknown_version, issued(6), Malformed),
    ("oversize", _oversize, issued(6), Malformed),
    ("not COSE at all", lambda: encode_manifest(manifest(6)), issued(6), Malformed),
    ("empty", lambda: b"", issued(6), Malformed),
]


@pytest.mark.parametrize(("name", "build", "now", "expected"), CASES, ids=[c[0] for c in CASES])
def test_manifest_case_table(name, build, now, expected):
    state = holding(5)
    data = build()
    if isinstance(expected, str):
        result = accept_manifest(state, data, now=now)
        assert result.status == expected
        if expected == "unchanged":
            assert result.state is state
        else:
            assert result.state.manifest_seq == 6 and result.state.manifest_bytes == data
            assert result.state.time_anchor == issued(6)
        return
    with pytest.raises(expected) as caught:
        accept_manifest(state, data, now=now)
    assert isinstance(caught.value, TrustError) and isinstance(caught.value, AgentError)
    assert state == holding(5)


def test_error_codes_are_stable():
    assert [e.code for e in (BadSignature, Malformed, WrongDevice, Rollback, Expired)] == [
        "bad_signature",
        "malformed",
        "wrong_device",
        "rollback",
        "expired",
    ]


def test_first_manifest_on_a_fresh_state():
    result = accept_manifest(fresh(), signed(1), now=issued(1))
    assert result.status == "accepted" and result.manifest == manifest(1)
    assert effective_features(result.state, now=issued(1)) == FEATURES


def test_every_older_sequence_replayed_in_random_order_is_refused():
    state = fresh()
    history = [signed(seq) for seq in range(1, 21)]
    for seq, data in enumerate(history, start=1):
        state = accept_manifest(state, data, now=issued(seq)).state
    replays = history[:-1]
    random.Random(20240601).shuffle(replays)
    for data in replays:
        with pytest.raises(Rollback):
            accept_manifest(state, data, now=issued(20))
    assert state.manifest_seq == 20 and state.manifest == manifest(20)


def test_clock_turned_back_30_days_never_extends_a_license():
    # A rotation (which keeps the key) carries a signed time 40 days on.
    state = accept_rotation(holding(5), rotation(1, new=(HUB,), issued_at=T0 + 40 * DAY), now=0)
    assert state.time_anchor == T0 + 40 * DAY
    turned_back = T0 + 10 * DAY
    # The held manifest (not_after T0 + 30 days + 5 h) no longer counts ...
    assert effective_features(state, now=turned_back) == {}
    # ... and a manifest delayed in transit, expired by the signed time, is refused.
    with pytest.raises(Expired):
        accept_manifest(state, signed(6, lease=31 * DAY), now=turned_back)


def test_a_lapse_once_observed_survives_turning_the_clock_back():
    state = holding(5)
    after_lease = issued(5) + LEASE + 1
    assert effective_features(state, now=after_lease) == {}
    lapsed = observe_clock(state, now=after_lease)
    assert lapsed.lapsed and observe_clock(lapsed, now=after_lease) is lapsed
    assert effective_features(lapsed, now=after_lease - 30 * DAY) == {}
    # redelivering the same manifest does not revive it; a newer one does
    again = accept_manifest(lapsed, signed(5), now=after_lease - 30 * DAY)
    assert again.status == "unchanged" and again.state.lapsed
    renewed = accept_manifest(lapsed, signed(6, issued_at=after_lease), now=after_lease)
    assert not renewed.state.lapsed
    assert effective_features(renewed.state, now=after_lease) == FEATURES


def test_observe_clock_changes_nothing_before_the_lease_ends():
    state = holding(5)
    assert observe_clock(state, now=issued(5) + LEASE - 1) is state
    assert observe_clock(fresh(), now=T0) == fresh()


def test_safe_defaults():
    assert effective_features(fresh(), now=T0) == {}
    state = holding(5)
    assert effective_features(state, now=issued(5) + LEASE - 1) == FEATURES
    assert effective_features(state, now=issued(5) + LEASE) == {}


def test_one_thousand_single_bit_mutants_are_never_accepted():
    state = holding(5)
    snapshot = dataclasses.replace(state)
    data = signed(6)
    bits = random.Random(1000).sample(range(len(data) * 8), 1000)
    outcomes = {}
    for bit in bits:
        with pytest.raises((TrustError,)) as caught:
            accept_manifest(state, flip_bit(data, bit), now=issued(6))
        outcomes[type(caught.value).__name__] = outcomes.get(type(caught.value).__name__, 0) + 1
        assert state == snapshot
    assert set(outcomes) <= {"BadSignature", "Malformed"}
    # and the same against a state already holding the genuine manifest: a
    # mutant is never even taken for the held one
    holding6 = accept_manifest(state, data, now=issued(6)).state
    for bit in bits[:200]:
        with pytest.raises(TrustError):
            accept_manifest(holding6, flip_bit(data, bit), now=issued(6))


# --- inspection ------------------------------------------------------------------------


def test_inspect_skips_only_the_sequence_rule():
    state = holding(5)
    assert inspect_manifest(state, signed(3), now=issued(5)) == manifest(3)
    with pytest.raises(WrongDevice):
        inspect_manifest(state, signed(3, device=OTHER_DEV), now=issued(5))
    anonymous = dataclasses.replace(state, device_id="")
    assert inspect_manifest(anonymous, signed(3, device=OTHER_DEV), now=issued(5))
    with pytest.raises(Expired):
        inspect_manifest(state, signed(3), now=issued(3) + LEASE)
    with pytest.raises(BadSignature):
        inspect_manifest(state, signed(3, key=ATTACKER), now=issued(5))


# --- key rotation ----------------------------------------------------------------------


def test_rotation_signed_by_the_trusted_key_is_accepted():
    state = accept_rotation(holding(5), rotation(1, new=(NEXT,)), now=T0)
    assert [a.kid for a in state.anchors["manifest"]] == [NEXT.kid]
    assert state.anchors["firmware"] == (FIRMWARE.anchor("firmware"),)
    assert HUB.kid in state.retired and state.rotation_seq == 1
    result = accept_manifest(state, signed(6, key=NEXT), now=issued(6))
    assert result.status == "accepted"


@pytest.mark.parametrize(
    "by", [ATTACKER, FIRMWARE, NEXT], ids=["untrusted", "other role", "not yet trusted"]
)
def test_rotation_by_an_untrusted_key_is_refused(by):
    state = holding(5)
    with pytest.raises(BadSignature):
        accept_rotation(state, rotation(1, by=by, new=(ATTACKER,)), now=T0)
    assert state == holding(5)


def test_rotation_by_a_retired_key_is_refused():
    state = accept_rotation(holding(5), rotation(1, new=(NEXT,)), now=T0)
    with pytest.raises(BadSignature):
        accept_rotation(state, rotation(2, by=HUB, new=(HUB,)), now=T0)


def test_after_rotation_the_retired_key_is_refused_and_the_cached_manifest_dropped():
    state = holding(5)
    assert effective_features(state, now=issued(5)) == FEATURES
    rotated = accept_rotation(state, rotation(1, new=(NEXT,)), now=T0)
    assert rotated.manifest is None and rotated.manifest_bytes is None
    assert effective_features(rotated, now=issued(5)) == {}  # safe defaults
    assert rotated.manifest_seq == 5  # older manifests stay refused
    with pytest.raises(BadSignature):
        accept_manifest(rotated, signed(6, key=HUB), now=issued(6))
    with pytest.raises(Rollback):
        accept_manifest(rotated, signed(4, key=NEXT), now=issued(6))
    assert accept_manifest(rotated, signed(6, key=NEXT), now=issued(6)).status == "accepted"


def test_a_manifest_still_signed_by_a_kept_key_survives_rotation():
    state = accept_rotation(holding(5), rotation(1, new=(HUB, NEXT)), now=T0)
    assert state.manifest == manifest(5)
    state = accept_rotation(state, rotation(2, by=NEXT, new=(NEXT,)), now=T0)
    assert state.manifest is None and HUB.kid in state.retired


def test_replayed_older_rotation_is_refused():
    first = rotation(1, new=(HUB, NEXT))
    second = rotation(2, new=(HUB, THIRD), retired=(NEXT,))
    state = accept_rotation(holding(5), first, now=T0)
    state = accept_rotation(state, second, now=T0)
    for replay in (first, second, rotation(2, new=(HUB,))):
        with pytest.raises(Rollback):
            accept_rotation(state, replay, now=T0)
    # once the signer itself is retired, its old rotations fail on the signature
    state = accept_rotation(state, rotation(3, by=THIRD, new=(THIRD,)), now=T0)
    with pytest.raises(BadSignature):
        accept_rotation(state, first, now=T0)


def test_rotation_cannot_re_trust_a_retired_key():
    state = accept_rotation(holding(5), rotation(1, new=(NEXT,)), now=T0)
    with pytest.raises(Malformed):
        accept_rotation(state, rotation(2, by=NEXT, new=(NEXT, HUB)), now=T0)


def test_rotation_of_another_role_is_refused_here():
    state = holding(5)
    data = rotation(1, by=FIRMWARE, new=(THIRD,), role="firmware")
    with pytest.raises(BadSignature):  # the firmware key is no manifest anchor
        accept_rotation(state, data, now=T0, role="manifest")
    with pytest.raises(Malformed):  # signed by the manifest key, but for another role
        accept_rotation(state, rotation(1, new=(THIRD,), role="firmware"), now=T0)
    rotated = accept_rotation(state, data, now=T0, role="firmware")
    assert rotated.anchors["firmware"] == (THIRD.anchor("firmware"),)
    assert rotated.manifest == manifest(5)


def test_state_is_immutable():
    state = fresh()
    assert isinstance(state, TrustedState)
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.manifest_seq = 9  # type: ignore[misc]
