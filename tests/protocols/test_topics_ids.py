import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols import topics
from protocols.errors import ProtocolError, TopicError
from protocols.ids import check_id, is_claim_client_id, is_device_id, is_valid_id

DEV = "dev-0123456789abcdef0123"


@pytest.mark.parametrize(
    "value",
    ["", "a/b", "a+b", "a#", "+", "#", "a b", "a\x00b", "a\nb", "é", "-lead", "x" * 65, "a\x7f"],
)
def test_invalid_ids_are_refused(value):
    assert not is_valid_id(value)
    with pytest.raises(TopicError):
        check_id(value)


@pytest.mark.parametrize("value", ["a", "SN-0001", "dev-1", "x" * 64, "a.b_c-d"])
def test_valid_ids(value):
    assert check_id(value) == value


def test_id_kinds():
    assert is_device_id(DEV)
    assert not is_device_id("claim-abc")
    assert is_claim_client_id("claim-abc")
    assert not is_claim_client_id("claim-")
    assert not is_claim_client_id(DEV)


def test_builders_round_trip_through_parser():
    up = topics.device_up(DEV, topics.UpKind.HELLO)
    assert up == f"d/{DEV}/up/hello"
    parsed = topics.parse(up)
    assert parsed == topics.DeviceTopic(DEV, topics.Direction.UP, "hello")
    down = topics.parse(topics.device_down(DEV, topics.DownKind.STATE))
    assert isinstance(down, topics.DeviceTopic) and down.direction is topics.Direction.DOWN
    claim = topics.parse(topics.claim_request("claim-xyz"))
    assert claim == topics.ClaimTopic("claim-xyz", True)
    assert topics.parse(topics.claim_response("claim-xyz")) == topics.ClaimTopic("claim-xyz", False)


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "d",
        f"d/{DEV}/up",
        f"d/{DEV}/up/unknown",
        f"d/{DEV}/sideways/hello",
        f"d/{DEV}/down/hello",  # hello is an up kind
        "d/+/up/hello",
        "d/#",
        "d/SN-1/up/hello",  # not a device id
        "claim/dev-1/req",  # not a claim id
        "claim/claim-x/other",
        "$SYS/broker/uptime",
        f"d/{DEV}/up/hello/extra",
        "x" * 300,
    ],
)
def test_parser_refuses_foreign_topics(topic):
    with pytest.raises(TopicError):
        topics.parse(topic)


def test_builders_refuse_bad_ids():
    with pytest.raises(TopicError):
        topics.device_up("dev-a/b", topics.UpKind.HELLO)
    with pytest.raises(TopicError):
        topics.claim_request("dev-x")


@given(st.text(max_size=300))
def test_parser_only_raises_protocol_errors(text):
    with contextlib.suppress(ProtocolError):
        topics.parse(text)
