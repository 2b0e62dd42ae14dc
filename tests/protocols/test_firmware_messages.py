"""The firmware wire messages: exact layout, bounds, and refusals of bad values."""

import pytest

from protocols import cbor
from protocols.errors import MessageError, PayloadTooLarge
from protocols.firmware_messages import (
    CHUNK_ERROR_CODES,
    MAX_CHUNK_SIZE,
    MAX_ENVELOPE,
    MESSAGES,
    REPORT_STEPS,
    FirmwareCancel,
    FirmwareChunk,
    FirmwareChunkRequest,
    FirmwareOffer,
    FirmwareQuery,
    FirmwareReport,
    FirmwareReportAck,
    is_job_id,
)
from protocols.messages import MESSAGE_TYPES, decode_as, decode_message, encode_message

JOB = "job-" + "0123456789abcdef01234567"


def test_every_firmware_type_is_registered():
    assert {cls.TYPE for cls in MESSAGES} == {
        "fw_offer",
        "fw_chunk",
        "fw_cancel",
        "fw_report_ack",
        "fw_query",
        "fw_chunk_req",
        "fw_report",
    }
    for cls in MESSAGES:
        assert MESSAGE_TYPES[cls.TYPE] is cls


@pytest.mark.parametrize(
    ("message", "layout"),
    [
        (
            FirmwareOffer(job_id=JOB, envelope=b"\xd8\x6b", chunk_size=4096, http_path="/p"),
            {0: 1, 1: "fw_offer", 2: JOB, 3: b"\xd8\x6b", 4: 4096, 5: "/p"},
        ),
        (
            FirmwareOffer(job_id=JOB, envelope=b"e", chunk_size=1024),
            {0: 1, 1: "fw_offer", 2: JOB, 3: b"e", 4: 1024},
        ),
        (
            FirmwareChunk(job_id=JOB, index=7, data=b"abc"),
            {0: 1, 1: "fw_chunk", 2: JOB, 3: 7, 4: b"abc"},
        ),
        (
            FirmwareCancel(job_id=JOB, reason="rollout_aborted"),
            {0: 1, 1: "fw_cancel", 2: JOB, 3: "rollout_aborted"},
        ),
        (
            FirmwareReportAck(keys=("a/b/1", "a/b/2")),
            {0: 1, 1: "fw_report_ack", 2: ["a/b/1", "a/b/2"]},
        ),
        (FirmwareQuery(installed_seq=0), {0: 1, 1: "fw_query", 2: 0}),
        (
            FirmwareQuery(installed_seq=3, job_id=JOB),
            {0: 1, 1: "fw_query", 2: 3, 3: JOB},
        ),
        (
            FirmwareChunkRequest(job_id=JOB, index=16, count=16),
            {0: 1, 1: "fw_chunk_req", 2: JOB, 3: 16, 4: 16},
        ),
        (
            FirmwareReport(
                job_id=JOB, step="failed", key="d/j/3", at=5, reason="health", installed_seq=2
            ),
            {0: 1, 1: "fw_report", 2: JOB, 3: "failed", 4: "d/j/3", 5: 5, 6: "health", 7: 2},
        ),
    ],
)
def test_wire_layout(message, layout):
    encoded = encode_message(message)
    assert cbor.decode(encoded) == layout
    assert decode_as(type(message), encoded) == message


def test_largest_offer_and_chunk_fit_the_default_decoder_cap():
    offer = FirmwareOffer(job_id=JOB, envelope=b"e" * MAX_ENVELOPE, chunk_size=MAX_CHUNK_SIZE)
    chunk = FirmwareChunk(job_id=JOB, index=2**32, data=b"c" * MAX_CHUNK_SIZE)
    for message in (offer, chunk):
        assert decode_message(encode_message(message)) == message


def test_size_cap_still_applies():
    chunk = FirmwareChunk(job_id=JOB, index=0, data=b"c" * MAX_CHUNK_SIZE)
    with pytest.raises(PayloadTooLarge):
        decode_message(encode_message(chunk), max_size=1024)


@pytest.mark.parametrize(
    "value",
    [JOB, "job-" + "a" * 24],
)
def test_job_ids(value):
    assert is_job_id(value)


@pytest.mark.parametrize(
    "value",
    [
        "job-" + "A" * 24,
        "job-" + "a" * 23,
        "job-" + "a" * 25,
        "dev-" + "a" * 24,
        "job-" + "g" * 24,
        "job-" + "a" * 23 + "/",
        "",
        None,
        7,
    ],
)
def test_not_job_ids(value):
    assert not is_job_id(value)


@pytest.mark.parametrize(
    "doc",
    [
        {0: 1, 1: "fw_offer", 2: "dev-x", 3: b"e", 4: 4096},  # not a job id
        {0: 1, 1: "fw_offer", 2: JOB, 3: b"", 4: 4096},  # empty envelope
        {0: 1, 1: "fw_offer", 2: JOB, 3: b"e" * (MAX_ENVELOPE + 1), 4: 4096},
        {0: 1, 1: "fw_offer", 2: JOB, 3: b"e", 4: 1023},  # chunk size below range
        {0: 1, 1: "fw_offer", 2: JOB, 3: b"e", 4: MAX_CHUNK_SIZE + 1},
        {0: 1, 1: "fw_offer", 2: JOB, 3: b"e", 4: 4096, 5: "relative/path"},
        {0: 1, 1: "fw_offer", 2: JOB, 3: b"e", 4: 4096, 5: "//evil.example/x"},
        {0: 1, 1: "fw_offer", 2: JOB, 3: "text", 4: 4096},
        {0: 1, 1: "fw_offer", 2: JOB, 3: b"e", 4: True},
        {0: 1, 1: "fw_chunk", 2: JOB, 3: -1, 4: b"x"},
        {0: 1, 1: "fw_chunk", 2: JOB, 3: 0, 4: b""},  # empty chunk
        {0: 1, 1: "fw_chunk", 2: JOB, 3: 0, 4: b"x" * (MAX_CHUNK_SIZE + 1)},
        {0: 1, 1: "fw_chunk", 2: JOB, 3: 0},
        {0: 1, 1: "fw_cancel", 2: JOB},
        {0: 1, 1: "fw_cancel", 2: JOB, 3: ""},
        {0: 1, 1: "fw_report_ack", 2: []},
        {0: 1, 1: "fw_report_ack", 2: ["k"] * 65},
        {0: 1, 1: "fw_report_ack", 2: "k"},
        {0: 1, 1: "fw_report_ack", 2: ["k", ""]},
        {0: 1, 1: "fw_report_ack", 2: ["k" * 257]},
        {0: 1, 1: "fw_query", 2: -1},
        {0: 1, 1: "fw_query", 2: 1, 3: "nope"},
        {0: 1, 1: "fw_chunk_req", 2: JOB, 3: 0, 4: 0},  # count 0
        {0: 1, 1: "fw_chunk_req", 2: JOB, 3: 0, 4: 17},  # count above the window
        {0: 1, 1: "fw_report", 2: JOB, 3: "exploded", 4: "k", 5: 0},
        {0: 1, 1: "fw_report", 2: JOB, 3: "confirmed", 4: "", 5: 0},
        {0: 1, 1: "fw_report", 2: JOB, 3: "confirmed", 4: "k" * 257, 5: 0},
        {0: 1, 1: "fw_report", 2: JOB, 3: "confirmed", 4: "k", 5: -5},
        {0: 1, 1: "fw_report", 2: JOB, 3: "failed", 4: "k", 5: 0, 6: "bad\x00"},
        {0: 1, 1: "fw_report", 2: JOB, 3: "failed", 4: "k", 5: 0, 7: "1"},
    ],
)
def test_invalid_firmware_messages_raise_message_error(doc):
    with pytest.raises(MessageError):
        decode_message(cbor.encode(doc))


def test_report_steps_and_error_codes_are_the_contract():
    assert REPORT_STEPS == (
        "downloading",
        "downloaded",
        "verified",
        "installing",
        "rebooting",
        "confirmed",
        "failed",
        "reverted",
    )
    assert CHUNK_ERROR_CODES == (
        "unknown_job",
        "not_entitled",
        "chunk_out_of_range",
        "job_not_active",
    )
