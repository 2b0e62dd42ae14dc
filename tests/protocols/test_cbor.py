from __future__ import annotations

import collections
import enum
import math
import random
import time
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import cbor
from protocols.cbor import Tag, decode, encode, encode_bstr, encode_text, encode_uint, leading_tag
from protocols.errors import DecodeError, MessageError, PayloadTooLarge, ProtocolError
from tests.protocols.cbor_reference import reference_encode

UINT64_MAX = (1 << 64) - 1

keys = st.one_of(st.integers(-(1 << 64), UINT64_MAX), st.text(max_size=8))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(1 << 64), UINT64_MAX),
    st.text(max_size=20),
    st.binary(max_size=20),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(keys, children, max_size=5)
    ),
    max_leaves=25,
)


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# --- round trips and determinism ------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(values)
def test_round_trip(value: Any) -> None:
    encoded = encode(value, max_depth=64)
    assert decode(encoded, max_depth=64) == value
    assert encode(decode(encoded, max_depth=64), max_depth=64) == encoded


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(keys, scalars, min_size=2, max_size=8), st.randoms())
def test_map_encoding_ignores_insertion_order(mapping: dict[Any, Any], rnd: random.Random) -> None:
    items = list(mapping.items())
    rnd.shuffle(items)
    assert encode(dict(items)) == encode(mapping)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(keys, scalars, min_size=2, max_size=8))
def test_map_keys_sorted_bytewise(mapping: dict[Any, Any]) -> None:
    decoded = decode(encode(mapping))
    encoded_keys = [encode(key) for key in decoded]
    assert encoded_keys == sorted(encoded_keys)


def test_core_deterministic_key_order_is_bytewise_not_length_first() -> None:
    # RFC 8949 4.2.1: 24 (0x1818) < 256 (0x190100) < -1 (0x20) < "a" (0x6161).
    assert encode({"a": 1, -1: 2, 256: 3, 24: 4}) == h("a4 1818 04 190100 03 20 02 6161 01")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, "00"),
        (23, "17"),
        (24, "1818"),
        (255, "18ff"),
        (256, "190100"),
        (65536, "1a00010000"),
        (1 << 32, "1b0000000100000000"),
        (UINT64_MAX, "1bffffffffffffffff"),
        (-1, "20"),
        (-(1 << 64), "3bffffffffffffffff"),
        (b"", "40"),
        ("IETF", "6449455446"),
        ("ü", "62c3bc"),
        ([], "80"),
        ([1, [2, 3]], "8201820203"),
        ({}, "a0"),
        (False, "f4"),
        (True, "f5"),
        (None, "f6"),
        (0.0, "f90000"),
        (1.5, "f93e00"),
        (65504.0, "f97bff"),
        (100000.0, "fa47c35000"),
        (1.1, "fb3ff199999999999a"),
        (math.inf, "f97c00"),
        (math.nan, "f97e00"),
        (Tag(1, 1363896240), "c11a514b67b0"),
        ((1, 2), "820102"),
    ],
)
def test_encode_shortest_forms(value: Any, expected: str) -> None:
    assert encode(value).hex() == expected


def test_floats_decode_in_every_width() -> None:
    assert decode(h("f93e00")) == 1.5
    assert decode(h("fa3fc00000")) == 1.5
    assert decode(h("fb3ff8000000000000")) == 1.5
    assert math.isnan(decode(h("f97e00")))
    assert decode(h("f9fc00")) == -math.inf


def test_decode_accepts_exactly_max_size() -> None:
    data = encode(b"x" * 100)
    assert decode(data, max_size=len(data)) == b"x" * 100


# --- rejections ------------------------------------------------------------------

REJECTED = {
    "duplicate int key": "a2 01 01 01 02",
    "duplicate text key": "a2 6161 01 6161 02",
    "duplicate key 1 and 1.0": "a2 01 01 f93c00 02",
    "indefinite array": "9f 01 ff",
    "indefinite map": "bf 01 01 ff",
    "indefinite bstr": "5f 41 01 ff",
    "indefinite tstr": "7f 61 61 ff",
    "trailing byte": "01 02",
    "trailing break": "01 ff",
    "two items": "80 80",
    "truncated array": "83 01 02",
    "truncated bstr": "45 0102",
    "truncated head": "19 01",
    "empty input": "",
    "lone break": "ff",
    "reserved additional info 28": "1c",
    "reserved additional info 31 on uint": "1f",
    "undefined": "f7",
    "simple(16)": "f0",
    "simple(32)": "f8 20",
    "simple two-byte form below 32": "f8 18",
    "invalid UTF-8": "62 c3 28",
    "UTF-8 surrogate": "63 ed a0 80",
    "float key": "a1 f93c00 01",
    "bool key": "a1 f5 01",
    "null key": "a1 f6 01",
    "bytes key": "a1 41 41 01",
    "array key": "a1 81 01 01",
    "map key": "a1 a1 01 01 01",
    "undefined inside array": "82 01 f7",
    "simple inside map": "a1 01 f0",
}


@pytest.mark.parametrize("data", list(REJECTED.values()), ids=list(REJECTED))
def test_rejections(data: str) -> None:
    with pytest.raises(DecodeError):
        decode(h(data))


REFUSED_TAGS = [0, 1, 2, 3, 4, 5, 21, 24, 25, 28, 29, 30, 35, 36, 37, 100, 256, 258, 998, 55799]


@pytest.mark.parametrize("tag", REFUSED_TAGS)
def test_tags_refused_unless_allowed(tag: int) -> None:
    for content in (1, "2013-03-21T20:04:00Z", b"\x01", [1, 2], [1, [2]]):
        data = encode(Tag(tag, content))
        with pytest.raises(DecodeError, match=f"tag {tag} "):
            decode(data)
        assert decode(data, allowed_tags=frozenset({tag})) == Tag(tag, content)


def test_tag_refused_when_another_is_allowed() -> None:
    with pytest.raises(DecodeError):
        decode(encode(Tag(1, 0)), allowed_tags=frozenset({18}))


def test_nested_tags_and_tags_inside_containers() -> None:
    allowed = frozenset({18, 24})
    value = Tag(18, [Tag(24, b"\x01"), {1: Tag(18, [])}])
    assert decode(encode(value), allowed_tags=allowed) == value
    with pytest.raises(DecodeError):
        decode(encode([1, {2: Tag(99, 0)}]), allowed_tags=allowed)


def test_shared_reference_tags_do_not_resolve() -> None:
    # 28(x) marks x shareable, 29(0) refers back: must be refused, not aliased.
    with pytest.raises(DecodeError):
        decode(h("82 d81c 81 01 d81d 00"))


def test_tag_as_map_key_refused_even_if_allowed() -> None:
    with pytest.raises(DecodeError):
        decode(h("a1 c1 01 01"), allowed_tags=frozenset({1}))


def test_depth_limit() -> None:
    assert decode(h("81" * 16 + "01")) is not None
    with pytest.raises(DecodeError):
        decode(h("81" * 17 + "01"))
    with pytest.raises(DecodeError):
        decode(h("81" * 3 + "01"), max_depth=2)
    assert decode(h("a1 01" * 16 + "01")) is not None
    with pytest.raises(DecodeError):
        decode(h("a1 01" * 17 + "01"))


def test_tags_count_towards_depth() -> None:
    allowed = frozenset({18})
    assert decode(h("d2" * 16 + "01"), allowed_tags=allowed) is not None
    with pytest.raises(DecodeError):
        decode(h("d2" * 17 + "01"), allowed_tags=allowed)
    # Deep nesting of refused tags fails on depth long before any stack trouble.
    with pytest.raises(DecodeError):
        decode(h("c1" * 60000 + "01"), max_size=1 << 20)


def test_size_cap_checked_before_decoding() -> None:
    with pytest.raises(PayloadTooLarge):
        decode(b"\xff" * (cbor.DEFAULT_MAX_SIZE + 1))
    with pytest.raises(PayloadTooLarge):
        decode(encode(b"x" * 10), max_size=5)


@pytest.mark.parametrize("data", ["text", bytearray(b"\x01"), memoryview(b"\x01"), None, 1])
def test_non_bytes_input_refused(data: Any) -> None:
    with pytest.raises(DecodeError):
        decode(data)


@pytest.mark.parametrize(
    "header",
    [
        "5b 7fffffffffffffff",
        "5b ffffffffffffffff",
        "7b ffffffffffffffff",
        "9b ffffffffffffffff",
        "bb ffffffffffffffff",
        "5a ffffffff",
        "9a ffffffff",
    ],
)
def test_huge_declared_lengths_fail_fast(header: str) -> None:
    started = time.monotonic()
    with pytest.raises(DecodeError):
        decode(h(header) + bytes(1000))
    assert time.monotonic() - started < 1.0


def test_every_truncation_is_refused() -> None:
    data = encode({"a": [1, 2.5, b"xyz", {"b": None}], 7: "text", -3: True})
    for end in range(len(data)):
        with pytest.raises(DecodeError):
            decode(data[:end])


def test_leading_tag() -> None:
    assert leading_tag(h("d2 80")) == 18
    assert leading_tag(h("d9 03e6 80")) == 998
    assert leading_tag(h("db ffffffffffffffff 80")) == UINT64_MAX
    assert leading_tag(h("80")) is None
    for bad in ("", "d9 03", "dc", "df"):
        with pytest.raises(DecodeError):
            leading_tag(h(bad))


# --- encoder errors -------------------------------------------------------------


def _cyclic() -> list[Any]:
    items: list[Any] = []
    items.append(items)
    return items


@pytest.mark.parametrize(
    "value",
    [
        1 << 64,
        -(1 << 64) - 1,
        {1.0: 1},
        {True: 1},
        {None: 1},
        {b"k": 1},
        {1, 2},
        object(),
        bytearray(b"x"),
        "\ud800",
        Tag(1 << 64, 0),
        Tag(True, 0),
        [[[[[[[[[[[[[[[[[0]]]]]]]]]]]]]]]]],
        _cyclic(),
    ],
    ids=repr,
)
def test_encode_refuses_values_outside_the_data_model(value: Any) -> None:
    with pytest.raises(MessageError):
        encode(value)


# --- fuzzing --------------------------------------------------------------------


def _decode_or_protocol_error(data: bytes, **kwargs: Any) -> Any:
    try:
        value = decode(data, **kwargs)
    except ProtocolError as exc:
        assert isinstance(exc, DecodeError)
        return None
    # Whatever we accept we can re-emit, and re-emitting is stable.
    again = encode(value)
    assert encode(decode(again, **kwargs)) == again
    return value


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=256))
def test_fuzz_arbitrary_bytes_only_raise_decode_error(data: bytes) -> None:
    _decode_or_protocol_error(data)


@settings(max_examples=1000, deadline=None)
@given(st.binary(min_size=1, max_size=64).map(lambda tail: b"\xd2" + tail))
def test_fuzz_tagged_bytes_with_allowed_tag(data: bytes) -> None:
    _decode_or_protocol_error(data, allowed_tags=frozenset({18}))


@settings(max_examples=1000, deadline=None)
@given(values, st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1 << 16), st.integers(0, 255))))
def test_fuzz_mutated_documents(value: Any, mutations: list[tuple[int, int, int]]) -> None:
    data = bytearray(encode(value, max_depth=64))
    for kind, position, byte in mutations:
        index = position % (len(data) + 1)
        if kind == 0 and index < len(data):
            data[index] = byte
        elif kind == 1:
            data.insert(index, byte)
        elif kind == 2 and index < len(data):
            del data[index]
        elif kind == 3 and index < len(data):
            data[index] ^= 1 << (byte % 8)
    _decode_or_protocol_error(bytes(data))


# --- the fast encoder writes exactly what the reference encoder writes ------------


class _Small(enum.IntEnum):
    ONE = 1
    BIG = 1 << 40


class _Word(enum.StrEnum):
    MONTH = "month"


class _Bytes(bytes):
    pass


class _Pair(NamedTuple):
    left: Any
    right: Any


floats = st.floats(allow_nan=True, allow_infinity=True)
subclassed = st.one_of(
    st.sampled_from([_Small.ONE, _Small.BIG, _Word.MONTH]),
    st.binary(max_size=8).map(_Bytes),
)
all_scalars = st.one_of(scalars, floats, subclassed)
all_keys = st.one_of(keys, st.sampled_from([_Small.ONE, _Small.BIG, _Word.MONTH]))
rich_values = st.recursive(
    all_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.lists(children, max_size=5).map(tuple),
        st.tuples(children, children).map(lambda pair: _Pair(*pair)),
        st.dictionaries(all_keys, children, max_size=5),
        st.dictionaries(keys, children, max_size=5).map(collections.OrderedDict),
        st.builds(Tag, st.integers(0, UINT64_MAX), children),
    ),
    max_leaves=30,
)


@settings(max_examples=1500, deadline=None)
@given(rich_values, st.integers(0, 20))
def test_encoder_is_byte_identical_to_the_reference(value: Any, depth: int) -> None:
    try:
        expected = reference_encode(value, max_depth=depth)
    except MessageError:
        with pytest.raises(MessageError):
            encode(value, max_depth=depth)
        return
    assert encode(value, max_depth=depth) == expected


@pytest.mark.parametrize(
    "value",
    [
        1 << 64,
        -(1 << 64) - 1,
        {1.0: 1},
        {True: 1},
        {None: 1},
        {b"k": 1},
        {(1,): 1},
        {1, 2},
        object(),
        bytearray(b"x"),
        memoryview(b"x"),
        "\ud800",
        {"\udfff": 1},
        Tag(1 << 64, 0),
        Tag(-1, 0),
        Tag(True, 0),
        Tag("1", 0),
        [[[[[[[[[[[[[[[[[0]]]]]]]]]]]]]]]]],
        _cyclic(),
        {"a": {"b": object()}},
    ],
    ids=repr,
)
def test_encoder_refuses_what_the_reference_refuses(value: Any) -> None:
    with pytest.raises(MessageError):
        reference_encode(value)
    with pytest.raises(MessageError):
        encode(value)


@pytest.mark.parametrize(
    "argument",
    [0, 23, 24, 255, 256, 65535, 65536, (1 << 32) - 1, 1 << 32, UINT64_MAX],
)
def test_head_boundaries_match_the_reference(argument: int) -> None:
    for value in (argument, -1 - argument, Tag(argument, None)):
        assert encode(value) == reference_encode(value)
    assert encode_bstr(b"x" * min(argument, 70000)) == reference_encode(b"x" * min(argument, 70000))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_encode_bstr_is_encode_of_bytes(data: bytes) -> None:
    assert encode_bstr(data) == encode(data) == reference_encode(data)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, UINT64_MAX), st.text(max_size=40))
def test_encode_uint_and_text_are_encode(number: int, text: str) -> None:
    assert encode_uint(number) == encode(number) == reference_encode(number)
    assert encode_text(text) == encode(text) == reference_encode(text)
    assert encode_uint(_Small.BIG) == encode(_Small.BIG)
    assert encode_text(_Word.MONTH) == encode(_Word.MONTH)


@pytest.mark.parametrize("value", [-1, 1 << 64, True, 1.0, "1", None])
def test_encode_uint_refuses_non_uints(value: Any) -> None:
    with pytest.raises(MessageError):
        encode_uint(value)


@pytest.mark.parametrize("value", [b"x", 1, None, "\ud800"])
def test_encode_text_refuses_non_text(value: Any) -> None:
    with pytest.raises(MessageError):
        encode_text(value)
