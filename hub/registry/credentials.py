"""MQTT credentials of devices, and the database-backed login check.

Passwords are stored in Mosquitto's ``$7$`` form so the same rows serve the
embedded broker (through :class:`DbCredentialVerifier`) and a generated
Mosquitto password file (through :func:`iter_device_password_hashes`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from hub.broker.passwords import hash_password, new_secret, verify_password
from hub.broker.principals import Principal, PrincipalKind
from hub.registry.models import Device, DeviceCredential
from protocols.ids import is_claim_client_id, is_device_id

log = logging.getLogger(__name__)

# Verified against when the username is unknown, so an unknown device costs the
# same time as a wrong password (no user enumeration by timing).
_DUMMY_HASH = hash_password(new_secret())


class DbCredentialVerifier:
    """A :class:`~hub.broker.principals.CredentialVerifier` backed by the registry.

    * the hub's own username with its password: a ``HUB`` principal;
    * a claim client id (``claim-...``): a ``CLAIM`` principal whatever the
      password, because claim sessions are fenced by ACL to their own claim
      topics and the real proof travels in the claim payload;
    * a device id with its password, device status ``claimed``: ``DEVICE``;
    * anything else: refused (``None``).
    """

    def __init__(
        self, session_factory: sessionmaker[Session], *, hub_username: str, hub_password_hash: str
    ) -> None:
        self._session_factory = session_factory
        self._hub_username = hub_username
        self._hub_password_hash = hub_password_hash

    def verify(self, username: str, password: str | None) -> Principal | None:
        """Return the principal for a valid login, ``None`` to refuse it."""
        if username == self._hub_username:
            if password is not None and verify_password(password, self._hub_password_hash):
                return Principal(PrincipalKind.HUB, username)
            return None
        if is_claim_client_id(username):
            return Principal(PrincipalKind.CLAIM, username)
        if is_device_id(username) and password is not None:
            return self._verify_device(username, password)
        return None

    def _verify_device(self, device_id: str, password: str) -> Principal | None:
        try:
            with self._session_factory() as session:
                row = session.execute(
                    select(DeviceCredential.password_hash, Device.status)
                    .join(Device, Device.id == DeviceCredential.device_id)
                    .where(DeviceCredential.device_id == device_id)
                ).first()
        except SQLAlchemyError:
            # Deny by default: a database hiccup must not let anyone in.
            log.exception("credential lookup failed for %s; login refused", device_id)
            return None
        stored, status = row if row is not None else (_DUMMY_HASH, None)
        ok = verify_password(password, stored)
        if row is None or not ok or status != "claimed":
            return None
        return Principal(PrincipalKind.DEVICE, device_id)


def issue_device_credential(session: Session, device: Device, now: datetime) -> str:
    """Mint (or replace) ``device``'s MQTT password; returns it in plaintext once.

    Only the ``$7$`` hash is stored. The device's status is not changed here:
    the claim flow decides that.
    """
    secret = new_secret()
    credential = session.get(DeviceCredential, device.id)
    if credential is None:
        credential = DeviceCredential(device_id=device.id, username=device.id, created_at=now)
        session.add(credential)
    credential.password_hash = hash_password(secret)
    credential.created_at = now
    return secret


def iter_device_password_hashes(session: Session) -> Iterator[tuple[str, str]]:
    """Yield ``(username, $7$ hash)`` of every claimed device, for Mosquitto.

    Disabled or reset devices are left out, so the generated password file
    refuses them too.
    """
    query = (
        select(DeviceCredential.username, DeviceCredential.password_hash)
        .join(Device, Device.id == DeviceCredential.device_id)
        .where(Device.status == "claimed")
        .order_by(DeviceCredential.username)
        .execution_options(yield_per=1000)
    )
    yield from ((username, password_hash) for username, password_hash in session.execute(query))
