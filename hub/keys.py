"""The hub's key material in its data directory.

- ``keys/manifest.pem``: the online key signing feature manifests and directives;
- ``keys/firmware.pem``: the firmware catalogue key (may move offline later);
- ``hub-mqtt.secret``: the hub's own MQTT password, unless configured.

Every file is created on first start with mode 0600.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from hub.broker.passwords import new_secret
from hub.settings import Settings
from protocols.messages import TrustAnchor
from provisioning.signer import (
    ROLE_FIRMWARE,
    ROLE_MANIFEST,
    Ed25519Signer,
    load_or_create_file_signer,
)


@dataclass(frozen=True, slots=True)
class HubKeys:
    """Signers of the hub's two roles and its MQTT secret."""

    manifest: Ed25519Signer
    firmware: Ed25519Signer
    mqtt_password: str

    def anchors(self) -> tuple[TrustAnchor, ...]:
        """The trust anchors a freshly claimed device receives."""
        return (self.manifest.anchor(ROLE_MANIFEST), self.firmware.anchor(ROLE_FIRMWARE))


def load_hub_keys(settings: Settings) -> HubKeys:
    """Load (creating on first start) the hub's keys and MQTT secret."""
    keys_dir = settings.keys_dir
    manifest = load_or_create_file_signer(keys_dir / "manifest.pem")
    firmware = load_or_create_file_signer(keys_dir / "firmware.pem")
    if settings.hub_mqtt_password is not None:
        password = settings.hub_mqtt_password.get_secret_value()
    else:
        password = _load_or_create_secret(settings.data_dir / "hub-mqtt.secret")
    return HubKeys(manifest=manifest, firmware=firmware, mqtt_password=password)


def _load_or_create_secret(path: Path) -> str:
    if path.exists():
        return path.read_text(encoding="ascii").strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    secret = new_secret()
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(secret + "\n")
    return secret
