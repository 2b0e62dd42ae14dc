"""Sans-IO session logic: what the agent sends and how it reads replies.

Nothing here opens a socket or reads a clock; the runner (or the fleet
simulator) feeds in ``now`` and incoming payloads and publishes what comes out.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_agent.components import SessionComponent
from device_agent.errors import ClaimFailed, StateError
from device_agent.identity import Identity, public_key_bytes
from device_agent.outgoing import Outgoing
from device_agent.trust import Accepted, Rollback, TrustedState, TrustError
from protocols import topics
from protocols.errors import ProtocolError
from protocols.messages import (
    ClaimAccepted,
    ClaimRequest,
    ErrorReply,
    Hello,
    ManifestAck,
    ManifestDelivery,
    Message,
    RotationDelivery,
    SeatReply,
    SeatRequest,
    State,
    Status,
    decode_message,
    encode_message,
    signing_input_for_claim,
)

log = logging.getLogger(__name__)

HELLO_RETRY_SECONDS = 5
"""First wait for the hub's ``state`` answer before a hello is sent again."""
HELLO_RETRY_MAX_SECONDS = 60


def build_claim(
    *,
    client_id: str,
    serial: str,
    key: Ed25519PrivateKey,
    token: str | None,
    nonce: bytes,
    now: int,
) -> Outgoing:
    """The claim request for this session, signed by the device key."""
    method = "token" if token is not None else "key"
    pubkey = public_key_bytes(key)
    sig = key.sign(
        signing_input_for_claim(
            client_id, serial=serial, method=method, token=token, pubkey=pubkey, nonce=nonce, ts=now
        )
    )
    request = ClaimRequest(
        serial=serial, method=method, pubkey=pubkey, nonce=nonce, ts=now, sig=sig, token=token
    )
    return Outgoing(topics.claim_request(client_id), encode_message(request))


def read_claim_reply(payload: bytes) -> Identity:
    """Turn the hub's answer into an identity.

    Raises:
        ClaimFailed: the hub refused the claim.
        ProtocolError: the answer is not a valid message.
    """
    message = decode_message(payload)
    if isinstance(message, ErrorReply):
        raise ClaimFailed(message.code, message.message, server_time=message.server_time)
    if not isinstance(message, ClaimAccepted):
        raise ClaimFailed("unexpected_reply", f"got a {message.TYPE!r} message")
    return Identity.from_claim(message)


class TrustPort(Protocol):
    """What the session needs from the trust store (a real one persists atomically)."""

    @property
    def state(self) -> TrustedState:
        """The accepted trust state."""
        ...

    def accept_manifest(self, data: bytes, *, now: int) -> Accepted:
        """Verify and keep a signed manifest, or raise a TrustError."""
        ...

    def accept_rotation(self, data: bytes, *, now: int) -> TrustedState:
        """Verify and apply a signed key rotation, or raise a TrustError."""
        ...


class DeviceSession:
    """The operational session of a claimed device."""

    def __init__(
        self,
        identity: Identity,
        *,
        agent_version: str,
        boot_epoch: int,
        trust: TrustPort | None = None,
        seat_products: tuple[str, ...] = (),
        components: Sequence[SessionComponent] = (),
    ) -> None:
        self.identity = identity
        self.agent_version = agent_version
        self.boot_epoch = boot_epoch
        self.trust = trust
        self.seat_products = seat_products
        self.held_seats: set[str] = set()
        self.last_state: State | None = None
        self.last_error: ErrorReply | None = None
        self.components = list(components)
        self._hello_sent_at: int | None = None  # unanswered hello: when it went out
        self._hello_retry = HELLO_RETRY_SECONDS

    @property
    def manifest_seq(self) -> int:
        """The sequence of the manifest the device holds (0: none)."""
        return self.trust.state.manifest_seq if self.trust is not None else 0

    @property
    def device_id(self) -> str:
        """The hub-issued device id."""
        return self.identity.device_id

    def subscriptions(self) -> list[str]:
        """The filters to subscribe to after every connect."""
        return [topics.device_down_filter(self.device_id)]

    def will(self) -> Outgoing:
        """The last will: the broker publishes it when we vanish ungracefully."""
        return self._status(online=False)

    def on_connected(self, *, now: int = 0) -> list[Outgoing]:
        """Announce presence, ask for our state and seats, then let components resume."""
        self._hello_sent_at, self._hello_retry = now, HELLO_RETRY_SECONDS
        checkouts = [self._seat("checkout", product) for product in self.seat_products]
        out = [self._status(online=True), self._hello(), *checkouts]
        for component in self.components:
            out.extend(component.on_connected(now=now))
        return out

    def tick(self, *, now: int) -> list[Outgoing]:
        """Periodic work while connected: an unanswered hello again, the components' work.

        A hello the hub never saw (it connected to the broker after us, or was
        restarting) is sent again after 5 s, then with doubling waits up to 60 s,
        until the hub's ``state`` answers it.
        """
        out: list[Outgoing] = []
        sent = self._hello_sent_at
        if sent is not None and now - sent >= self._hello_retry:
            log.info("no answer to hello after %d s: sending it again", now - sent)
            self._hello_sent_at = now
            self._hello_retry = min(self._hello_retry * 2, HELLO_RETRY_MAX_SECONDS)
            out.append(self._hello())
        for component in self.components:
            out.extend(component.tick(now=now))
        return out

    def _hello(self) -> Outgoing:
        hello = Hello(
            agent_version=self.agent_version,
            manifest_seq=self.manifest_seq,
            boot_epoch=self.boot_epoch,
        )
        return Outgoing(
            topics.device_up(self.device_id, topics.UpKind.HELLO), encode_message(hello)
        )

    def heartbeat(self) -> list[Outgoing]:
        """Presence, a heartbeat for each held seat, another try for each missing one."""
        seats = [
            self._seat("heartbeat" if product in self.held_seats else "checkout", product)
            for product in self.seat_products
        ]
        return [self._status(online=True), *seats]

    def going_offline(self) -> list[Outgoing]:
        """A clean goodbye: give the seats back, then say we are offline."""
        releases = [self._seat("release", product) for product in sorted(self.held_seats)]
        self.held_seats.clear()
        return [*releases, self._status(online=False)]

    def on_message(self, topic: str, payload: bytes, *, now: int) -> list[Outgoing]:
        """Handle one message from our ``down`` subtree; bad input is logged, not fatal."""
        try:
            parsed = topics.parse(topic)
            if not isinstance(parsed, topics.DeviceTopic) or parsed.device_id != self.device_id:
                log.warning("ignoring message on foreign topic %s", topic)
                return []
            message = decode_message(payload)
        except ProtocolError as exc:
            log.warning("rejected message on %s: %s: %s", topic, exc.code, exc)
            return []
        if isinstance(message, State) and message.device_id == self.device_id:
            self.last_state = message
            self._hello_sent_at = None  # answered
            log.info(
                "hub state: manifest_seq=%d server_time=%d",
                message.manifest_seq,
                message.server_time,
            )
        elif isinstance(message, ManifestDelivery) and self.trust is not None:
            for rotation in message.rotations or ():
                self._on_rotation(rotation, now)
            return self._on_manifest(message.signed, now)
        elif isinstance(message, RotationDelivery) and self.trust is not None:
            self._on_rotation(message.signed, now)
        elif isinstance(message, SeatReply):
            self._on_seat(message)
        elif isinstance(message, ErrorReply):
            self.last_error = message
            log.warning("hub refused %s: %s: %s", message.ref, message.code, message.message)
            # A component may own the refused topic (a usage batch, a chunk request).
            return self._to_components(message, topic, now, quiet=True)
        else:
            return self._to_components(message, topic, now)
        return []

    def _to_components(
        self, message: Message, topic: str, now: int, *, quiet: bool = False
    ) -> list[Outgoing]:
        for component in self.components:
            handled = component.on_message(message, now=now)
            if handled is not None:
                return handled
        if not quiet:
            log.warning("unexpected %s message on %s", message.TYPE, topic)
        return []

    def _on_manifest(self, signed: bytes, now: int) -> list[Outgoing]:
        assert self.trust is not None
        try:
            accepted = self.trust.accept_manifest(signed, now=now)
        except TrustError as exc:
            log.warning("manifest refused: %s: %s", exc.code, exc)
            return [self._ack(self.manifest_seq, "rejected", f"{exc.code}: {exc}")]
        except StateError as exc:
            # Not persisted, so not acknowledged: the hub will deliver it again.
            log.error("manifest not stored: %s", exc)
            return []
        log.info("manifest seq %d %s", accepted.manifest.seq, accepted.status)
        return [self._ack(accepted.manifest.seq, accepted.status, None)]

    def _on_rotation(self, signed: bytes, now: int) -> None:
        assert self.trust is not None
        try:
            self.trust.accept_rotation(signed, now=now)
        except Rollback:
            return  # already applied: deliveries repeat every rotation, oldest first
        except (TrustError, StateError) as exc:
            log.warning("key rotation refused: %s", exc)
            return
        log.info("key rotation accepted (rotation seq %d)", self.trust.state.rotation_seq)

    def _on_seat(self, reply: SeatReply) -> None:
        if reply.granted:
            self.held_seats.add(reply.product)
        else:
            self.held_seats.discard(reply.product)
        log.info("seat %s for %s: %s", reply.op, reply.product, reply.reason)

    def _seat(self, op: str, product: str) -> Outgoing:
        request = SeatRequest(op=op, product=product)
        return Outgoing(
            topics.device_up(self.device_id, topics.UpKind.SEAT), encode_message(request)
        )

    def _ack(self, seq: int, status: str, reason: str | None) -> Outgoing:
        ack = ManifestAck(seq=seq, status=status, reason=reason[:256] if reason else None)
        return Outgoing(
            topics.device_up(self.device_id, topics.UpKind.MANIFEST_ACK), encode_message(ack)
        )

    def _status(self, *, online: bool) -> Outgoing:
        return Outgoing(
            topics.device_up(self.device_id, topics.UpKind.STATUS),
            encode_message(Status(online=online)),
        )
