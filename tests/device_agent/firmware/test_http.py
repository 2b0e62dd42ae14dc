"""Ranged HTTP downloads: the httpx fetcher against a mock transport, the component over it."""

from __future__ import annotations

import re

import httpx
import pytest

from device_agent.firmware.component import FirmwareComponent
from device_agent.firmware.errors import DownloadFailed
from device_agent.firmware.http import HttpRangeFetcher
from device_agent.firmware.install import Step
from protocols.firmware_messages import FirmwareChunkRequest, FirmwareReport
from tests.device_agent.firmware.fakes import (
    CHUNK,
    DEV,
    FACTORY,
    NEW,
    Device,
    FakeHub,
    make_job,
    settings,
)

PATH = "/api/v1/device/firmware/job-000000000000000000000001/payload"


def serve(image: bytes, *, status: int = 206, extra: bytes = b"", content_range=None):
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", request.headers["range"])
        assert match is not None
        first, last = int(match[1]), int(match[2])
        body = image[first : last + 1] + extra
        header = content_range or f"bytes {first}-{last}/{len(image)}"
        return httpx.Response(status, content=body, headers={"Content-Range": header})

    return seen, httpx.MockTransport(handler)


def fetcher(transport) -> HttpRangeFetcher:
    return HttpRangeFetcher("http://hub.test", username=DEV, password="secret", transport=transport)


def test_a_range_is_fetched_with_basic_auth():
    seen, transport = serve(NEW)
    assert fetcher(transport).fetch(PATH, 10, 2057) == NEW[10:2058]
    request = seen[0]
    assert request.headers["range"] == "bytes=10-2057"
    assert request.headers["authorization"].startswith("Basic ")
    assert request.url.path == PATH


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (401, "unauthorized"),
        (403, "not_entitled"),
        (404, "unknown_job"),
        (409, "job_not_active"),
        (416, "bad_range"),
    ],
)
def test_refusals_are_permanent(status, code):
    _, transport = serve(NEW, status=status)
    with pytest.raises(DownloadFailed) as failed:
        fetcher(transport).fetch(PATH, 0, 99)
    assert failed.value.code == code and failed.value.permanent


def test_a_server_error_is_transient():
    _, transport = serve(NEW, status=503)
    with pytest.raises(DownloadFailed) as failed:
        fetcher(transport).fetch(PATH, 0, 99)
    assert not failed.value.permanent


def test_a_body_larger_than_the_range_is_refused():
    _, transport = serve(NEW, extra=b"more")
    with pytest.raises(DownloadFailed) as failed:
        fetcher(transport).fetch(PATH, 0, 99)
    assert failed.value.code == "payload_too_large"


def test_another_content_range_is_refused():
    _, transport = serve(NEW, content_range="bytes 0-99/6671")
    with pytest.raises(DownloadFailed) as failed:
        fetcher(transport).fetch(PATH, 100, 199)
    assert failed.value.code == "bad_range"


def test_a_short_body_is_transient():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(206, content=b"x" * 10, headers={"Content-Range": "bytes 0-99/6671"})

    with pytest.raises(DownloadFailed) as failed:
        fetcher(httpx.MockTransport(handler)).fetch(PATH, 0, 99)
    assert not failed.value.permanent


def test_a_transport_error_is_transient():
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(DownloadFailed) as failed:
        fetcher(httpx.MockTransport(handler)).fetch(PATH, 0, 99)
    assert failed.value.code == "http_error" and not failed.value.permanent


def test_bad_arguments_are_refused_before_any_request():
    _, transport = serve(NEW)
    for path, first, last in (("relative", 0, 1), ("//evil/x", 0, 1), (PATH, 5, 4)):
        with pytest.raises(DownloadFailed):
            fetcher(transport).fetch(path, first, last)


class FakeFetcher:
    """Serves the job's image; ``corrupt`` flips a byte of the first answers."""

    def __init__(self, image: bytes, *, corrupt: int = 0, fail: DownloadFailed | None = None):
        self.image, self.corrupt, self.fail = image, corrupt, fail
        self.calls: list[tuple[str, int, int]] = []

    def fetch(self, path: str, first: int, last: int) -> bytes:
        self.calls.append((path, first, last))
        if self.fail is not None:
            raise self.fail
        body = self.image[first : last + 1]
        if self.corrupt:
            self.corrupt -= 1
            body = bytes([body[0] ^ 1]) + body[1:]
        return body


def http_device(tmp_path, fake: FakeFetcher) -> tuple[Device, FakeHub]:
    hub = FakeHub(jobs=[make_job(1, http_path=PATH)])
    device = Device(tmp_path, hub, settings=settings(transport="http", http_url="http://hub"))
    device.provision()
    device.component = FirmwareComponent(
        device_id=DEV,
        root=tmp_path,
        settings=device.settings,
        keys=lambda: device.keys,
        fetcher=fake,
        now=device.now,
    )
    return device, hub


def test_the_component_downloads_over_http_and_verifies_every_chunk(tmp_path):
    fake = FakeFetcher(NEW, corrupt=1)
    device, hub = http_device(tmp_path, fake)
    device.connect()
    component = device.component
    assert component is not None
    assert not [m for m in device.published if isinstance(m, FirmwareChunkRequest)]
    assert component.step is Step.DOWNLOADING  # the corrupt range waits for the timeout
    assert component.refused_chunks == {"chunk_corrupt": 1}
    device.tick(component.settings.chunk_timeout_seconds)
    assert component.step is Step.CONFIRMED and component.running_image() == NEW
    assert all(path == PATH for path, _, _ in fake.calls)
    assert all(first % CHUNK == 0 for _, first, _ in fake.calls)  # ranges on chunk bounds
    assert hub.steps(hub.jobs[0].job_id)[-1] == "confirmed"


def test_an_http_refusal_fails_the_job(tmp_path):
    fake = FakeFetcher(NEW, fail=DownloadFailed("HTTP 403", code="not_entitled", permanent=True))
    device, _hub = http_device(tmp_path, fake)
    device.connect()
    reports = [m for m in device.published if isinstance(m, FirmwareReport)]
    assert [r.step for r in reports] == ["downloading", "failed"]
    assert reports[-1].reason == "download failed: not_entitled: HTTP 403"
    assert device.component is not None and device.component.running_image() == FACTORY


def test_transient_http_failures_are_retried_then_given_up(tmp_path):
    fake = FakeFetcher(NEW, fail=DownloadFailed("HTTP 503", code="http_error"))
    device, _ = http_device(tmp_path, fake)
    device.connect()
    component = device.component
    assert component is not None
    for _ in range(component.settings.max_stalls + 1):
        device.tick(component.settings.chunk_timeout_seconds)
    assert component.step is Step.FAILED and len(fake.calls) > component.settings.max_stalls


def test_without_an_http_path_the_download_falls_back_to_mqtt(tmp_path):
    fake = FakeFetcher(NEW)
    device, hub = http_device(tmp_path, fake)
    hub.jobs = [make_job(1)]
    device.connect()
    assert fake.calls == [] and hub.requests
    assert device.component is not None and device.component.step is Step.CONFIRMED
