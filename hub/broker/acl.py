"""Pure MQTT access rules shared by both brokers.

Nothing here does IO: the embedded broker's plugins call these functions for
every CONNECT, SUBSCRIBE, PUBLISH and delivery, and the generated Mosquitto ACL
file (:mod:`hub.broker.mosquitto`) expresses the same grants as patterns.

Grants per :class:`~hub.broker.principals.PrincipalKind` (deny by default)::

    DEVICE  publish   d/{id}/up/+            subscribe d/{id}/down/#
    CLAIM   publish   claim/{id}/req         subscribe claim/{id}/res
    HUB     publish   d/+/down/#             subscribe d/+/up/#
                      claim/+/res                      claim/+/req
                                                       $share/+/d/+/up/#
                                                       $share/+/claim/+/req

A requested filter is allowed only when a granted filter *covers* it: every
concrete topic the request can match is matched by the grant
(:func:`filter_covers`). This is stricter than amqtt's stock
``TopicAccessControlListPlugin``, which lets a ``+`` grant cover a ``#`` request.
"""

from __future__ import annotations

import re

from hub.broker.principals import Principal, PrincipalKind
from protocols.ids import HUB_CLIENT_PREFIX, is_claim_client_id, is_device_id, is_valid_id
from protocols.topics import MAX_TOPIC_LENGTH

SHARED_PREFIX = "$share"
"""First level of an MQTT 5 / Mosquitto shared subscription ``$share/<group>/<filter>``."""

# C0 and C1 controls, DEL, and the non-characters MQTT 3.1.1 §1.5.3 forbids.
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\ufffe\uffff]")


def validate_filter(topic_filter: str) -> bool:
    """Return whether ``topic_filter`` is a well-formed subscription filter.

    Wildcards must occupy whole levels and ``#`` may only be the last level.
    Empty, over-long, non-UTF-8-encodable or control-character filters fail.
    A ``$share/<group>/<filter>`` needs a literal group and a valid filter.
    """
    if not _well_formed(topic_filter):
        return False
    levels = topic_filter.split("/")
    if levels[0] == SHARED_PREFIX:
        return len(levels) >= 3 and _literal_level(levels[1]) and bool(levels[1])
    return True


def validate_topic(topic: str) -> bool:
    """Return whether ``topic`` is a well-formed concrete (publish) topic."""
    return _valid_text(topic) and "+" not in topic and "#" not in topic


def filter_covers(granted: str, requested: str) -> bool:
    """Return whether every topic matching ``requested`` also matches ``granted``.

    Both arguments are filters (a concrete topic is a filter without
    wildcards). ``#`` covers its parent level and everything below; ``+``
    covers exactly one level, including a requested ``+`` but never a
    requested ``#``; a leading wildcard never covers a ``$``-topic.
    Malformed filters are never covered.
    """
    # A grant may use "+" as a $share group ("any group"); a request may not.
    if not (_well_formed(granted) and validate_filter(requested)):
        return False
    grant_levels = granted.split("/")
    request_levels = requested.split("/")
    if request_levels[0].startswith("$") and grant_levels[0] in ("+", "#"):
        return False  # [MQTT-4.7.2-1]
    return _levels_cover(grant_levels, request_levels)


def _levels_cover(grant_levels: list[str], request_levels: list[str]) -> bool:
    for index, grant in enumerate(grant_levels):
        if grant == "#":
            return True  # "a/#" also covers the parent "a" [MQTT-4.7.1-2]
        if index >= len(request_levels):
            return False
        request = request_levels[index]
        if request == "#":
            return False  # only a granted "#" covers a requested "#"
        if grant not in ("+", request):
            return False  # a literal grant covers only the same literal
    return len(request_levels) == len(grant_levels)


def kind_for_username(username: str) -> PrincipalKind | None:
    """Return the principal kind a username's prefix implies, or ``None``."""
    if is_device_id(username):
        return PrincipalKind.DEVICE
    if is_claim_client_id(username):
        return PrincipalKind.CLAIM
    hub_like = is_valid_id(username) and username.startswith(HUB_CLIENT_PREFIX)
    if hub_like and len(username) > len(HUB_CLIENT_PREFIX):
        return PrincipalKind.HUB
    return None


def login_acceptable(client_id: str, username: str | None) -> bool:
    """Return whether a CONNECT's identity may even be checked against credentials.

    The client id must equal the username, be a valid id, and carry the prefix
    of one of the three principal kinds.
    """
    if not isinstance(client_id, str) or not isinstance(username, str):
        return False
    return client_id == username and kind_for_username(username) is not None


def principal_matches(principal: Principal, client_id: str) -> bool:
    """Return whether a verifier's answer fits the session that asked.

    Guards against a verifier bug handing out, say, a HUB principal for a
    ``dev-`` username: the username must be the client id and its prefix must
    agree with the principal's kind.
    """
    return (
        principal.username == client_id
        and login_acceptable(client_id, principal.username)
        and kind_for_username(principal.username) is principal.kind
    )


def allowed_publish(principal: Principal) -> tuple[str, ...]:
    """Return the filters ``principal`` may publish under (empty: nothing)."""
    if kind_for_username(principal.username) is not principal.kind:
        return ()
    name = principal.username
    if principal.kind is PrincipalKind.DEVICE:
        return (f"d/{name}/up/+",)  # up kinds are one level (protocol §5)
    if principal.kind is PrincipalKind.CLAIM:
        return (f"claim/{name}/req",)
    return ("d/+/down/#", "claim/+/res")


def allowed_subscribe(principal: Principal) -> tuple[str, ...]:
    """Return the filters ``principal`` may subscribe to (empty: nothing)."""
    if kind_for_username(principal.username) is not principal.kind:
        return ()
    name = principal.username
    if principal.kind is PrincipalKind.DEVICE:
        return (f"d/{name}/down/#",)
    if principal.kind is PrincipalKind.CLAIM:
        return (f"claim/{name}/res",)
    plain = ("d/+/up/#", "claim/+/req")
    return plain + tuple(f"{SHARED_PREFIX}/+/{grant}" for grant in plain)


def may_publish(principal: Principal, topic: str) -> bool:
    """Return whether ``principal`` may publish on the concrete ``topic``."""
    if not validate_topic(topic):
        return False
    return any(filter_covers(grant, topic) for grant in allowed_publish(principal))


def may_subscribe(principal: Principal, topic_filter: str) -> bool:
    """Return whether ``principal`` may subscribe with ``topic_filter``."""
    if not validate_filter(topic_filter):
        return False
    return any(filter_covers(grant, topic_filter) for grant in allowed_subscribe(principal))


def may_receive(principal: Principal, topic: str) -> bool:
    """Return whether a message on ``topic`` may be delivered to ``principal``.

    A second line of defence at delivery time: even a subscription that
    slipped through must not carry a topic outside the subscriber's grants.
    """
    if not validate_topic(topic):
        return False
    grants = [g for g in allowed_subscribe(principal) if not g.startswith(SHARED_PREFIX + "/")]
    return any(filter_covers(grant, topic) for grant in grants)


def _valid_text(value: str) -> bool:
    if not isinstance(value, str) or not value or len(value) > MAX_TOPIC_LENGTH:
        return False
    if _FORBIDDEN_CHARS.search(value):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates cannot travel in MQTT
        return False
    return True


def _well_formed(topic_filter: str) -> bool:
    if not _valid_text(topic_filter):
        return False
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def _literal_level(level: str) -> bool:
    return "+" not in level and "#" not in level


__all__ = [
    "SHARED_PREFIX",
    "allowed_publish",
    "allowed_subscribe",
    "filter_covers",
    "kind_for_username",
    "login_acceptable",
    "may_publish",
    "may_receive",
    "may_subscribe",
    "principal_matches",
    "validate_filter",
    "validate_topic",
]
