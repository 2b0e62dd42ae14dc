"""Loading the public conformance vectors from ../shared/vectors (never copied here)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest

from protocols import cbor
from protocols.cose import CoseKey

VECTORS_DIR = Path(__file__).resolve().parents[3] / "shared" / "vectors"
COSE_DIR = VECTORS_DIR / "cose"
SUIT_DIR = VECTORS_DIR / "suit"

requires_cose_vectors = pytest.mark.skipif(
    not COSE_DIR.is_dir(), reason=f"COSE conformance vectors not found at {COSE_DIR}"
)
requires_suit_vectors = pytest.mark.skipif(
    not SUIT_DIR.is_dir(), reason=f"SUIT examples not found at {SUIT_DIR}"
)


def cose_files(subdir: str, pattern: str = "*.json") -> list[Path]:
    """Vector files of one COSE directory, sorted; empty when the directory is missing."""
    return sorted((COSE_DIR / subdir).glob(pattern))


def load(path: Path) -> dict[str, Any]:
    """Parse a vector file; the files start with a UTF-8 byte-order mark."""
    data: dict[str, Any] = json.loads(path.read_bytes().decode("utf-8-sig"))
    return data


def b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def message(vector: dict[str, Any]) -> bytes:
    return bytes.fromhex(vector["output"]["cbor"])


def to_be_signed(vector: dict[str, Any]) -> bytes:
    return bytes.fromhex(vector["intermediates"]["ToBeSign_hex"])


def external_aad(vector: dict[str, Any]) -> bytes:
    return bytes.fromhex(vector["input"]["sign0"].get("external", ""))


def plaintext(vector: dict[str, Any]) -> bytes:
    return str(vector["input"]["plaintext"]).encode()


def jwk(vector: dict[str, Any]) -> dict[str, str]:
    key: dict[str, str] = vector["input"]["sign0"]["key"]
    return key


def cose_key(vector: dict[str, Any]) -> CoseKey:
    """The vector's public key as a CoseKey (raises for curves we do not support)."""
    key = jwk(vector)
    kid = key["kid"].encode()
    if key["kty"] == "EC":
        return CoseKey.es256_from_xy(kid, b64url(key["x"]), b64url(key["y"]))
    return CoseKey.ed25519(kid, bytes.fromhex(key["x_hex"]))


def raw_sign1_items(data: bytes) -> list[Any]:
    """The four array items of a (possibly wrongly tagged) COSE_Sign1, parsed loosely."""
    value = cbor.decode(data, allowed_tags=frozenset({cbor.leading_tag(data) or 0}))
    items: list[Any] = value.value if isinstance(value, cbor.Tag) else value
    return items


def suit_public_key_pem() -> bytes:
    """The SUIT examples' public key, as printed in the vectors README."""
    text = (VECTORS_DIR / "README.md").read_text(encoding="utf-8-sig")
    found = re.search(r"-----BEGIN PUBLIC KEY-----.*?-----END PUBLIC KEY-----", text, re.S)
    assert found is not None
    return found.group(0).encode()


def suit_envelope(index: int) -> bytes:
    """The last hex block of exampleN.txt: the envelope with its COSE authentication."""
    text = (SUIT_DIR / f"example{index}.txt").read_text(encoding="utf-8-sig")
    blocks = re.findall(r"~~~\n([0-9a-fA-F\s]+?)~~~", text)
    return bytes.fromhex("".join(blocks[-1].split()))
