"""Which key rotations a device still needs, given the key it last acknowledged."""

from hub.manifests.service import ManifestPolicy, RotationStep
from protocols.rotation import RotationDocument, sign_rotation
from provisioning.signer import ROLE_MANIFEST, Ed25519Signer

K1, K2, K3 = (Ed25519Signer.generate() for _ in range(3))


def _step(seq: int, old: Ed25519Signer, new: Ed25519Signer) -> RotationStep:
    doc = RotationDocument(
        role=ROLE_MANIFEST,
        seq=seq,
        anchors=(new.anchor(ROLE_MANIFEST),),
        retired=(old.kid,),
        issued_at=1,
    )
    return RotationStep.from_signed(sign_rotation(doc, kid=old.kid, sign=old.sign))


STEPS = (_step(1, K1, K2), _step(2, K2, K3))
POLICY = ManifestPolicy(kid=K3.kid, sign=K3.sign, rotations=STEPS)


def test_steps_know_what_they_retire():
    assert STEPS[0].retired == {K1.kid.hex()} and STEPS[1].retired == {K2.kid.hex()}


def test_device_on_the_oldest_key_gets_every_rotation_in_order():
    assert POLICY.rotations_after(K1.kid.hex()) == (STEPS[0].signed, STEPS[1].signed)


def test_device_one_rotation_behind_gets_only_the_last():
    assert POLICY.rotations_after(K2.kid.hex()) == (STEPS[1].signed,)


def test_device_on_the_current_key_gets_none():
    assert POLICY.rotations_after(K3.kid.hex()) == ()


def test_unknown_key_gets_all_and_no_rotations_means_none():
    assert POLICY.rotations_after(None) == (STEPS[0].signed, STEPS[1].signed)
    assert ManifestPolicy(kid=K1.kid, sign=K1.sign).rotations_after(None) == ()
