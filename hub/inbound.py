"""Routes messages from devices to the services, one transaction per batch.

Identity comes from the topic, which the broker binds to the session: a device
may only publish under ``d/{its own id}/up/``, so the id in the topic *is* the
authenticated session's id (DESIGN.md, Security model). Payload fields never
name the sender.

Each message that may fail half way (claims, seats, hello, status) runs in its
own SAVEPOINT, so one bad message is answered with a typed error and logged
while the rest of the batch commits. Manifest acks, the bulk of the traffic
after a fan-out, are validated before their only write and applied together:
one query for their senders, one for their manifest rows, no SAVEPOINT.
Replies are returned, and published by the adapter only after the commit.

A plugin handler may hold work over for its next call (the firmware handler
does, for chunk requests over its per-call byte budget): it says so through a
``backlog`` count (:class:`HoldsBacklog`). It serves that work first whenever
a batch brings it messages; :attr:`InboundRouter.has_backlog` tells the adapter
of the device topics to call :meth:`InboundRouter.serve_backlog` after each
batch it handles, or at once when no message is waiting. (A batch from the
claim broker's client never serves it: its replies would go to the wrong
broker.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from hub.audit.service import record
from hub.entitlements import seats
from hub.errors import ClaimRefused, HubError
from hub.manifests import service as manifests
from hub.mqtt.outbound import Inbound, Outbound
from hub.plugins import BatchHandler
from hub.registry import claims, presence
from protocols import topics
from protocols.errors import MessageError, ProtocolError
from protocols.messages import (
    ClaimRequest,
    ErrorReply,
    Hello,
    ManifestAck,
    Message,
    SeatReply,
    SeatRequest,
    Status,
    decode_message,
    encode_message,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Prepared:
    """An inbound message routed and decoded, not yet applied."""

    topic: str
    parsed: topics.DeviceTopic | topics.ClaimTopic
    reply_topic: str
    message: Message

    @property
    def device_id(self) -> str:
        """The sending device (acks only come from device topics)."""
        assert isinstance(self.parsed, topics.DeviceTopic)
        return self.parsed.device_id


@runtime_checkable
class HoldsBacklog(Protocol):
    """A batch handler that may keep work for its next call."""

    @property
    def backlog(self) -> int:
        """Items held over for the next call (0: none)."""
        ...


def _backlog(handler: object) -> int:
    return handler.backlog if isinstance(handler, HoldsBacklog) else 0


@dataclass
class BatchResult:
    """What one batch produced: replies, and whether credentials changed."""

    outbound: list[Outbound]
    credentials_changed: bool = False


class InboundRouter:
    """Turns batches of inbound messages into committed state and replies."""

    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session],
        claim_policy: claims.ClaimPolicy,
        manifest_policy: manifests.ManifestPolicy,
        clock: Callable[[], datetime],
        max_payload_bytes: int,
        handlers: Sequence[BatchHandler] = (),
    ) -> None:
        self._session_factory = session_factory
        self._handlers = {handler.kind: handler for handler in handlers}
        self._claim_policy = claim_policy
        self._manifest_policy = manifest_policy
        self._clock = clock
        self._max_payload = max_payload_bytes

    @property
    def has_backlog(self) -> bool:
        """Whether a handler holds work over (:meth:`serve_backlog` should run soon)."""
        return any(_backlog(handler) for handler in self._handlers.values())

    def handle_batch(self, batch: Sequence[Inbound]) -> BatchResult:
        """Process ``batch`` in one transaction; returns what to publish after commit.

        Manifest acks are collected and applied together (see :meth:`_apply_acks`)
        just before the next message that touches the database, and at the end,
        so the database sees every message's effects in arrival order.
        """
        now = self._clock()
        result = BatchResult(outbound=[])
        acks: list[tuple[str, ManifestAck]] = []
        pending: dict[str, list[tuple[str, Message]]] = {}
        with self._session_factory() as session:
            for inbound in batch:
                prepared = self._prepare(inbound, result)
                if prepared is None:
                    continue
                if _is_ack(prepared):
                    assert isinstance(prepared.message, ManifestAck)
                    acks.append((prepared.device_id, prepared.message))
                    continue
                handler_kind = self._handler_kind(prepared)
                if handler_kind is not None:
                    pending.setdefault(handler_kind, []).append(
                        (prepared.device_id, prepared.message)
                    )
                    continue
                self._apply_acks(session, acks, now)
                self._apply_pending(session, pending, now, result)
                self._handle_one(session, prepared, now, result)
            self._apply_acks(session, acks, now)
            self._apply_pending(session, pending, now, result)
            session.commit()
        return result

    def serve_backlog(self) -> BatchResult:
        """Call every handler that holds work over, with no new messages, in one transaction.

        Returns what to publish after the commit, as :meth:`handle_batch` does.
        """
        now = self._clock()
        result = BatchResult(outbound=[])
        with self._session_factory() as session:
            for kind, handler in self._handlers.items():
                if _backlog(handler):
                    result.outbound.extend(self._run_handler(session, kind, [], now))
            session.commit()
        return result

    def _handler_kind(self, prepared: _Prepared) -> str | None:
        """The plugin handler kind ``prepared`` goes to, if a plugin owns its topic."""
        parsed = prepared.parsed
        if isinstance(parsed, topics.DeviceTopic) and parsed.kind in self._handlers:
            return parsed.kind
        return None

    def _apply_pending(
        self,
        session: Session,
        pending: dict[str, list[tuple[str, Message]]],
        now: datetime,
        out: BatchResult,
    ) -> None:
        """Hand each plugin its collected messages from claimed senders, then forget them."""
        for kind, items in pending.items():
            claimed = presence.claimed_ids(session, (device_id for device_id, _ in items))
            accepted = [item for item in items if item[0] in claimed]
            if accepted:
                out.outbound.extend(self._run_handler(session, kind, accepted, now))
        pending.clear()

    def _run_handler(
        self, session: Session, kind: str, items: list[tuple[str, Message]], now: datetime
    ) -> list[Outbound]:
        """One plugin call in a SAVEPOINT, so a defect in it cannot poison the batch.

        A handler must not raise for bad input; if it does anyway, its writes
        are rolled back, its senders get ``internal_error`` (they retry or
        isolate per their own policy) and the rest of the batch commits.
        Database outages (``OperationalError``, ``InterfaceError``) still fail
        the batch, which the adapter then retries whole.
        """
        try:
            with session.begin_nested():
                return self._handlers[kind].handle(session, items, now)
        except (OperationalError, InterfaceError):
            raise
        except Exception:
            log.exception(
                "the %r handler failed on %d message(s); answered internal_error", kind, len(items)
            )
            return [
                _error(
                    topics.device_down(device_id, topics.DownKind.ERROR),
                    "internal_error",
                    "the hub could not process this message; retry later",
                    topics.device_up(device_id, topics.UpKind(kind)),
                )
                for device_id in dict.fromkeys(device_id for device_id, _ in items)
            ]

    def _prepare(self, inbound: Inbound, out: BatchResult) -> _Prepared | None:
        """Route and decode ``inbound`` (no database); ``None`` when it was dropped or refused."""
        try:
            parsed = topics.parse(inbound.topic)
        except ProtocolError as exc:
            log.warning("dropped message on unroutable topic %r: %s", inbound.topic, exc)
            return None
        if not _is_inbound(parsed):
            # Hub-to-device topics are never answered: replying could loop.
            log.warning("dropped message on outbound topic %r", inbound.topic)
            return None
        reply_topic = _reply_topic(parsed)
        try:
            message = decode_message(inbound.payload, max_size=self._max_payload)
        except ProtocolError as exc:
            log.warning("rejected message on %s: %s: %s", inbound.topic, exc.code, exc)
            out.outbound.append(_error(reply_topic, exc.code, str(exc), inbound.topic))
            return None
        return _Prepared(inbound.topic, parsed, reply_topic, message)

    def _apply_acks(
        self, session: Session, acks: list[tuple[str, ManifestAck]], now: datetime
    ) -> None:
        """Apply the collected manifest acks in order, then forget them.

        No SAVEPOINT: unlike claims or seat checkouts, an ack cannot fail half
        way. Everything that can refuse it (topic, payload, claimed sender,
        sequence and status against the current row) is checked before its only
        write, plain attribute updates of one already-loaded row; a failure at
        flush or commit fails the whole batch, as it did with a SAVEPOINT
        (the adapter then retries the batch).
        """
        if not acks:
            return
        claimed = presence.claimed_ids(session, (device_id for device_id, _ in acks))
        manifests.handle_acks(session, [a for a in acks if a[0] in claimed], now=now)
        acks.clear()

    def _handle_one(
        self, session: Session, prepared: _Prepared, now: datetime, out: BatchResult
    ) -> None:
        parsed, reply_topic, topic = prepared.parsed, prepared.reply_topic, prepared.topic
        try:
            with session.begin_nested():
                out.outbound.extend(self._dispatch(session, parsed, prepared.message, now, out))
        except ClaimRefused as exc:
            assert isinstance(parsed, topics.ClaimTopic)
            self._refuse_claim(session, parsed, topic, exc, now)
            clock = int(now.timestamp()) if exc.code == "stale_request" else None
            out.outbound.append(_error(reply_topic, exc.code, str(exc), topic, server_time=clock))
        except (ProtocolError, HubError) as exc:
            log.warning("rejected message on %s: %s: %s", topic, exc.code, exc)
            out.outbound.append(_error(reply_topic, exc.code, str(exc), topic))
        except IntegrityError:
            # A concurrent writer won a unique key (e.g. two workers, one claim);
            # the savepoint rolled back only this message.
            log.warning("conflicting concurrent update for %s; refused", topic)
            out.outbound.append(_error(reply_topic, "conflict", "concurrent update", topic))

    def _dispatch(
        self,
        session: Session,
        parsed: topics.DeviceTopic | topics.ClaimTopic,
        message: Message,
        now: datetime,
        out: BatchResult,
    ) -> list[Outbound]:
        if isinstance(parsed, topics.ClaimTopic):
            if not isinstance(message, ClaimRequest):
                raise ClaimRefused("invalid_message", "expected a claim request")
            accepted = claims.handle_claim(
                session,
                client_id=parsed.client_id,
                request=message,
                now=now,
                policy=self._claim_policy,
            )
            out.credentials_changed = True
            log.info("claim accepted: serial %s -> %s", message.serial, accepted.device_id)
            return [Outbound(topics.claim_response(parsed.client_id), encode_message(accepted))]
        return self._device_message(session, parsed, message, now)

    def _device_message(
        self, session: Session, parsed: topics.DeviceTopic, message: Message, now: datetime
    ) -> list[Outbound]:
        device_id, kind = parsed.device_id, parsed.kind
        if isinstance(message, Status) and kind == topics.UpKind.STATUS.value:
            presence.handle_status(session, device_id=device_id, status=message, now=now)
            if message.online:
                return []
            # Clean offline or last will: its floating seats go back to the pool.
            freed = seats.release_all_for_device(session, device_id, now)
            return manifests.issue(session, freed, now=now, policy=self._manifest_policy)
        if presence.claimed_device(session, device_id) is None:
            return []  # disabled or reset meanwhile: its messages no longer count
        if isinstance(message, Hello) and kind == topics.UpKind.HELLO.value:
            deliveries = manifests.on_hello(
                session, device_id=device_id, hello=message, now=now, policy=self._manifest_policy
            )
            seq = manifests.current_seq(session, device_id)
            state = presence.handle_hello(
                session, device_id=device_id, hello=message, now=now, manifest_seq=seq
            )
            return state + deliveries
        if isinstance(message, ManifestAck) and kind == topics.UpKind.MANIFEST_ACK.value:
            manifests.handle_ack(session, device_id=device_id, ack=message, now=now)
            return []
        if isinstance(message, SeatRequest) and kind == topics.UpKind.SEAT.value:
            return self._seat(session, device_id, message, now)
        raise MessageError(f"a {message.TYPE!r} message does not belong on {kind!r}")

    def _seat(
        self, session: Session, device_id: str, request: SeatRequest, now: datetime
    ) -> list[Outbound]:
        changed: frozenset[str] = frozenset()
        reason: str
        if request.op == "checkout":
            result = seats.checkout_seat(
                session, device_id=device_id, product_id=request.product, now=now
            )
            granted, reason, changed = result.granted, result.reason, frozenset(result.device_ids)
        elif request.op == "heartbeat":
            granted = seats.heartbeat_seat(
                session, device_id=device_id, product_id=request.product, now=now
            )
            reason = "held" if granted else "not_held"
        else:
            changed = seats.release_seat(
                session, device_id=device_id, product_id=request.product, now=now
            )
            granted, reason = False, "released"
        reply = SeatReply(op=request.op, product=request.product, granted=granted, reason=reason)
        topic = topics.device_down(device_id, topics.DownKind.SEAT)
        # The seat changes what the device may use: its manifest follows the reply.
        deliveries = manifests.issue(session, changed, now=now, policy=self._manifest_policy)
        return [Outbound(topic, encode_message(reply)), *deliveries]

    def _refuse_claim(
        self,
        session: Session,
        parsed: topics.ClaimTopic,
        topic: str,
        exc: ClaimRefused,
        now: datetime,
    ) -> None:
        log.warning("claim refused on %s: %s: %s", topic, exc.code, exc)
        record(
            session,
            tenant_id=exc.tenant_id,
            actor=f"claim:{parsed.client_id}",
            action="claim.refused",
            target_type="device",
            target_id=exc.target,
            now=now,
            outcome="refused",
            detail={"code": exc.code, "message": str(exc)},
        )


def _is_ack(prepared: _Prepared) -> bool:
    parsed = prepared.parsed
    return (
        isinstance(parsed, topics.DeviceTopic)
        and parsed.kind == topics.UpKind.MANIFEST_ACK.value
        and isinstance(prepared.message, ManifestAck)
    )


def _is_inbound(parsed: topics.DeviceTopic | topics.ClaimTopic) -> bool:
    if isinstance(parsed, topics.ClaimTopic):
        return parsed.is_request
    return parsed.direction is topics.Direction.UP


def _reply_topic(parsed: topics.DeviceTopic | topics.ClaimTopic) -> str:
    if isinstance(parsed, topics.ClaimTopic):
        return topics.claim_response(parsed.client_id)
    return topics.device_down(parsed.device_id, topics.DownKind.ERROR)


def _error(
    topic: str, code: str, message: str, ref: str, *, server_time: int | None = None
) -> Outbound:
    reply = ErrorReply(
        code=_printable(code, 64),
        message=_printable(message or code, 256),
        ref=ref[:256],
        server_time=server_time,
    )
    return Outbound(topic, encode_message(reply))


def _printable(text: str, limit: int) -> str:
    # Exception text may carry newlines or bytes from the offending payload;
    # the reply must itself be a valid message (no control characters).
    cleaned = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    return (cleaned or "error")[:limit]
