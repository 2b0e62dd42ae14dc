"""Hypothesis strategies for the messages in ``protocols.firmware_messages``.

``tests/protocols/test_messages.py`` round-trips every registered message type
and fails when one has no strategy here.
"""

from typing import Any

from hypothesis import strategies as st

from protocols.firmware_messages import (
    MAX_CHUNK_SIZE,
    MAX_CHUNK_WINDOW,
    MIN_CHUNK_SIZE,
    REPORT_STEPS,
    FirmwareCancel,
    FirmwareChunk,
    FirmwareChunkRequest,
    FirmwareOffer,
    FirmwareQuery,
    FirmwareReport,
    FirmwareReportAck,
)

job_ids = st.from_regex(r"job-[0-9a-f]{24}", fullmatch=True)
texts = st.text(
    alphabet=st.characters(exclude_categories=("Cs", "Cc")),
    min_size=1,
    max_size=64,
)
uints = st.integers(min_value=0, max_value=2**64 - 1)
report_keys = st.from_regex(r"[A-Za-z0-9%._-]{1,64}/job-[0-9a-f]{24}/[0-9]{1,8}", fullmatch=True)
http_paths = st.from_regex(r"/api/v1/device/firmware/[a-z0-9-]{1,40}/payload", fullmatch=True)

FIRMWARE_STRATEGIES: dict[type, Any] = {
    FirmwareOffer: st.builds(
        FirmwareOffer,
        job_id=job_ids,
        envelope=st.binary(min_size=1, max_size=512),
        chunk_size=st.integers(MIN_CHUNK_SIZE, MAX_CHUNK_SIZE),
        http_path=st.none() | http_paths,
    ),
    FirmwareChunk: st.builds(
        FirmwareChunk,
        job_id=job_ids,
        index=uints,
        data=st.binary(min_size=1, max_size=256),
    ),
    FirmwareCancel: st.builds(FirmwareCancel, job_id=job_ids, reason=texts),
    FirmwareReportAck: st.builds(
        FirmwareReportAck, keys=st.lists(report_keys, min_size=1, max_size=64).map(tuple)
    ),
    FirmwareQuery: st.builds(FirmwareQuery, installed_seq=uints, job_id=st.none() | job_ids),
    FirmwareChunkRequest: st.builds(
        FirmwareChunkRequest,
        job_id=job_ids,
        index=uints,
        count=st.integers(1, MAX_CHUNK_WINDOW),
    ),
    FirmwareReport: st.builds(
        FirmwareReport,
        job_id=job_ids,
        step=st.sampled_from(REPORT_STEPS),
        key=report_keys,
        at=uints,
        reason=st.none() | texts,
        installed_seq=st.none() | uints,
    ),
}
