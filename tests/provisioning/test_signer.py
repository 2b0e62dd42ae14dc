import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key

from protocols.cose import CoseKey, sign1, verify_sign1
from provisioning.errors import KeyFileError
from provisioning.signer import (
    ROLE_MANIFEST,
    Ed25519Signer,
    key_id_for,
    load_or_create_file_signer,
)


def test_file_signer_is_created_private_and_reloaded(tmp_path):
    path = tmp_path / "keys" / "manifest.pem"
    first = load_or_create_file_signer(path)
    assert path.stat().st_mode & 0o777 == 0o600
    again = load_or_create_file_signer(path)
    assert again.public_key_bytes() == first.public_key_bytes()
    assert again.kid == key_id_for(first.public_key_bytes()) and len(again.kid) == 8


def test_signatures_verify_as_cose_under_the_anchor():
    signer = Ed25519Signer.generate()
    anchor = signer.anchor(ROLE_MANIFEST)
    assert (anchor.kid, anchor.alg, anchor.key) == (signer.kid, -8, signer.public_key_bytes())
    signed = sign1(b"payload", kid=signer.kid, sign=signer.sign)
    key = CoseKey.ed25519(anchor.kid, anchor.key)
    assert verify_sign1(signed, [key]).payload == b"payload"


def test_key_file_readable_by_others_is_refused(tmp_path):
    path = tmp_path / "k.pem"
    load_or_create_file_signer(path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_or_create_file_signer(path)


@pytest.mark.parametrize("content", [b"not a key", b""])
def test_garbage_key_file_is_refused(tmp_path, content):
    path = tmp_path / "k.pem"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileError):
        load_or_create_file_signer(path)


def test_non_ed25519_key_is_refused(tmp_path):
    path = tmp_path / "k.pem"
    pem = generate_private_key(SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="not an Ed25519"):
        load_or_create_file_signer(path)
