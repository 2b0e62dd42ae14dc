"""Webhook signatures and sealed secrets (pure and file-level)."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path

import pytest

from hub.billing.secret_box import KEY_FILE, SecretBox, SecretUnavailable
from hub.billing.signatures import (
    SignatureInvalid,
    compute_signature,
    signature_header,
    verify_signature,
)

SECRET = "whsec_test"
BODY = b'{"id":1,"type":"invoice.finalized"}'
T = 1_900_000_000


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET.encode(), f"{T}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert compute_signature(SECRET, T, BODY) == expected
    assert signature_header(SECRET, T, BODY) == f"t={T},v1={expected}"
    assert verify_signature(SECRET, signature_header(SECRET, T, BODY), BODY, now=T + 10) == T


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        f"t={T}",
        "v1=abc",
        f"t=abc,v1={compute_signature(SECRET, T, BODY)}",
        f"t={T},t={T},v1={compute_signature(SECRET, T, BODY)}",
        f"t={T},v1={'0' * 64}",
        f"t={T + 1},v1={compute_signature(SECRET, T, BODY)}",  # timestamp is signed
        "t=1," + "v1=x," * 400,
    ],
)
def test_bad_headers_are_refused(header: str) -> None:
    with pytest.raises(SignatureInvalid):
        verify_signature(SECRET, header, BODY, now=T)


def test_stale_or_future_timestamps_are_refused() -> None:
    header = signature_header(SECRET, T, BODY)
    verify_signature(SECRET, header, BODY, now=T + 300)
    with pytest.raises(SignatureInvalid, match="tolerance"):
        verify_signature(SECRET, header, BODY, now=T + 301)
    with pytest.raises(SignatureInvalid, match="tolerance"):
        verify_signature(SECRET, header, BODY, now=T - 301)


def test_any_of_several_signatures_may_match() -> None:
    good = compute_signature(SECRET, T, BODY)
    verify_signature(SECRET, f"t={T},v1={'f' * 64},v1={good}", BODY, now=T)


def test_secret_box_round_trip_and_binding(tmp_path: Path) -> None:
    box = SecretBox(tmp_path / "keys")
    sealed = box.seal("whsec_abc", context="webhook:t1:e1")
    assert "whsec_abc" not in sealed
    assert box.open(sealed, context="webhook:t1:e1") == "whsec_abc"
    assert box.seal("whsec_abc", context="webhook:t1:e1") != sealed  # fresh nonce
    with pytest.raises(SecretUnavailable):
        box.open(sealed, context="webhook:t1:e2")  # moved to another row
    with pytest.raises(SecretUnavailable):
        box.open(sealed[:-4] + "AAAA", context="webhook:t1:e1")
    with pytest.raises(SecretUnavailable):
        box.open("v2:" + sealed[3:], context="webhook:t1:e1")
    key = tmp_path / "keys" / KEY_FILE
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    again = SecretBox(tmp_path / "keys")  # the key file is reused, never replaced
    assert again.open(sealed, context="webhook:t1:e1") == "whsec_abc"
    other = SecretBox(tmp_path / "other")
    with pytest.raises(SecretUnavailable):
        other.open(sealed, context="webhook:t1:e1")


def test_a_broken_key_file_is_a_typed_error(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).write_text("not base64!\n")
    with pytest.raises(SecretUnavailable):
        SecretBox(tmp_path)
    (tmp_path / KEY_FILE).write_text("c2hvcnQ=\n")
    with pytest.raises(SecretUnavailable):
        SecretBox(tmp_path)
