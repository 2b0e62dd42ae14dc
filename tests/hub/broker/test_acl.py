"""Unit tests of the pure access rules in hub.broker.acl."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.broker import acl
from hub.broker.principals import Principal, PrincipalKind

DEV_A = Principal(PrincipalKind.DEVICE, "dev-a")
CLAIM = Principal(PrincipalKind.CLAIM, "claim-k1")
HUB = Principal(PrincipalKind.HUB, "hub-main")


@pytest.mark.parametrize(
    ("granted", "requested", "covered"),
    [
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("a/+", "a/b", True),
        ("a/+", "a/+", True),
        ("a/+", "a/#", False),  # amqtt's stock ACL gets this one wrong
        ("a/+", "a", False),
        ("a/+", "a/b/c", False),
        ("a/#", "a", True),  # "#" includes the parent level
        ("a/#", "a/b/c", True),
        ("a/#", "a/+/c", True),
        ("a/#", "a/#", True),
        ("a/b/#", "a/#", False),
        ("a/b/#", "a/+/c", False),
        ("+/b", "a/b", True),
        ("+/b", "+/b", True),
        ("+/b", "#", False),
        ("#", "#", True),
        ("#", "+/#", True),
        ("#", "$SYS/x", False),  # leading wildcards never match $-topics
        ("+/x", "$SYS/x", False),
        ("$SYS/#", "$SYS/x", True),
        ("$SYS/#", "#", False),
        ("d/+/up/#", "d/dev-a/up/hello", True),
        ("d/+/up/#", "d/+/down/#", False),
        ("a/#/b", "a/x/b", False),  # malformed grant
        ("a/b", "a/b+", False),  # malformed request
        ("a/b", "", False),
        ("a//b", "a//b", True),
        ("a/+/b", "a//b", True),
    ],
)
def test_filter_covers(granted: str, requested: str, covered: bool) -> None:
    assert acl.filter_covers(granted, requested) is covered


@pytest.mark.parametrize(
    ("value", "as_filter", "as_topic"),
    [
        ("d/dev-a/up/hello", True, True),
        ("d/+/up/#", True, False),
        ("#", True, False),
        ("a/#/b", False, False),
        ("a/b#", False, False),
        ("a/+b", False, False),
        ("", False, False),
        ("a\x00b", False, False),
        ("a\nb", False, False),
        ("a\x85b", False, False),
        ("\ud800", False, False),
        ("x" * 257, False, False),
        ("$share/g/d/+/up/#", True, False),
        ("$share/+/d/+/up/#", False, False),
        ("$share/g", False, True),
    ],
)
def test_validate(value: str, as_filter: bool, as_topic: bool) -> None:
    assert acl.validate_filter(value) is as_filter
    assert acl.validate_topic(value) is as_topic


@pytest.mark.parametrize(
    ("principal", "topic", "allowed"),
    [
        (DEV_A, "d/dev-a/up/hello", True),
        (DEV_A, "d/dev-a/up/status", True),
        (DEV_A, "d/dev-a/up/x/y", False),  # up kinds are one level: d/{id}/up/+
        (DEV_A, "d/dev-a/up", False),
        (DEV_A, "d/dev-a/up/", True),  # an empty level is still one level
        (DEV_A, "d/dev-a/upx/hello", False),
        (DEV_A, "d/dev-a/down/state", False),
        (DEV_A, "d/dev-b/up/hello", False),
        (DEV_A, "claim/claim-k1/req", False),
        (DEV_A, "d/dev-a/up/+", False),
        (DEV_A, "$SYS/x", False),
        (CLAIM, "claim/claim-k1/req", True),
        (CLAIM, "claim/claim-k1/res", False),
        (CLAIM, "claim/claim-k2/req", False),
        (HUB, "d/dev-a/down/state", True),
        (HUB, "claim/claim-k1/res", True),
        (HUB, "d/dev-a/up/hello", False),
        (HUB, "claim/claim-k1/req", False),
        (Principal(PrincipalKind.HUB, "dev-a"), "d/dev-b/down/state", False),  # kind mismatch
        (Principal(PrincipalKind.DEVICE, "dev-a/#"), "d/dev-a/#/up/x", False),
    ],
)
def test_may_publish(principal: Principal, topic: str, allowed: bool) -> None:
    assert acl.may_publish(principal, topic) is allowed


@pytest.mark.parametrize(
    ("principal", "topic_filter", "allowed"),
    [
        (DEV_A, "d/dev-a/down/#", True),
        (DEV_A, "d/dev-a/down/state", True),
        (DEV_A, "d/dev-a/down/+", True),
        (DEV_A, "d/dev-a/#", False),
        (DEV_A, "d/dev-b/down/#", False),
        (DEV_A, "d/+/down/#", False),
        (DEV_A, "#", False),
        (DEV_A, "+/#", False),
        (DEV_A, "$SYS/#", False),
        (DEV_A, "d/+/up/#", False),
        (DEV_A, "$share/g/d/dev-a/down/#", False),
        (CLAIM, "claim/claim-k1/res", True),
        (CLAIM, "claim/+/res", False),
        (CLAIM, "claim/claim-k2/res", False),
        (HUB, "d/+/up/#", True),
        (HUB, "claim/+/req", True),
        (HUB, "$share/workers/d/+/up/#", True),
        (HUB, "$share/workers/claim/+/req", True),
        (HUB, "$share/workers/#", False),
        (HUB, "d/+/down/#", False),
        (HUB, "#", False),
    ],
)
def test_may_subscribe(principal: Principal, topic_filter: str, allowed: bool) -> None:
    assert acl.may_subscribe(principal, topic_filter) is allowed


def test_device_grants() -> None:
    assert acl.allowed_publish(DEV_A) == ("d/dev-a/up/+",)
    assert acl.allowed_subscribe(DEV_A) == ("d/dev-a/down/#",)


def test_may_receive_ignores_shared_prefix() -> None:
    assert acl.may_receive(HUB, "d/dev-a/up/hello")
    assert not acl.may_receive(DEV_A, "d/dev-b/down/state")


@pytest.mark.parametrize(
    ("client_id", "username", "ok"),
    [
        ("dev-a", "dev-a", True),
        ("claim-k1", "claim-k1", True),
        ("hub-main", "hub-main", True),
        ("dev-a", "dev-b", False),
        ("dev-a", None, False),
        ("", "", False),
        ("hub-", "hub-", False),
        ("claim-", "claim-", False),
        ("dev-a+", "dev-a+", False),
        ("dev-a/x", "dev-a/x", False),
        ("dev-#", "dev-#", False),
        ("dev-\x01", "dev-\x01", False),
        ("device", "device", False),  # no known kind prefix
    ],
)
def test_login_acceptable(client_id: str, username: str | None, ok: bool) -> None:
    assert acl.login_acceptable(client_id, username) is ok


def test_principal_must_match_session() -> None:
    assert acl.principal_matches(DEV_A, "dev-a")
    assert not acl.principal_matches(DEV_A, "dev-b")
    assert not acl.principal_matches(Principal(PrincipalKind.HUB, "dev-a"), "dev-a")


def test_stock_amqtt_acl_lets_plus_cover_hash() -> None:
    """Why the hub ships its own topic plugin (witness of the amqtt 0.12 flaw)."""
    from amqtt.plugins.topic_checking import TopicAccessControlListPlugin

    assert TopicAccessControlListPlugin.topic_ac("a/#", "a/+")
    assert not acl.filter_covers("a/+", "a/#")


# -- property: coverage is sound against concrete topics ----------------------

LEVEL = st.sampled_from(["a", "b", "$x", ""])
FILTER_LEVEL = st.sampled_from(["a", "b", "$x", "", "+"])


@st.composite
def filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(FILTER_LEVEL, min_size=1, max_size=4))
    if draw(st.booleans()):
        levels.append("#")
    return "/".join(levels)


def matches(topic_filter: str, topic: str) -> bool:
    """Reference MQTT matcher, written independently of acl.filter_covers."""
    f, t = topic_filter.split("/"), topic.split("/")
    if t[0].startswith("$") and f[0] in ("+", "#"):
        return False
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t) or level not in ("+", t[i]):
            return False
    return len(f) == len(t)


@settings(max_examples=400, deadline=None)
@given(granted=filters(), requested=filters(), topic=st.lists(LEVEL, min_size=1, max_size=6))
def test_covered_filters_match_only_granted_topics(
    granted: str, requested: str, topic: list[str]
) -> None:
    concrete = "/".join(topic)
    if acl.filter_covers(granted, requested) and matches(requested, concrete):
        assert matches(granted, concrete)
