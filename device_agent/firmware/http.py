"""Ranged HTTP download of a firmware payload from the hub's API (the IO edge).

``GET {http_url}{http_path}`` with ``Range: bytes=a-b`` and HTTP Basic auth
(the device's MQTT username and password). The hub answers ``206`` with a
``Content-Range``; the body is returned unverified: the component splits it
into chunks and checks each against the signed manifest before writing
(:func:`device_agent.firmware.processor.split_range`).

Failures raise :class:`~device_agent.firmware.errors.DownloadFailed`;
``permanent`` is set for answers a retry cannot change (401, 403, 404, 409, 416,
a ``Content-Range`` that is not the one asked for).
"""

from __future__ import annotations

import re
from typing import Protocol

import httpx

from device_agent.firmware.errors import DownloadFailed

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_PERMANENT = {
    401: "unauthorized",
    403: "not_entitled",
    404: "unknown_job",
    409: "job_not_active",
    416: "bad_range",
}


class RangeFetcher(Protocol):
    """Fetches ``first..last`` (inclusive) of the payload at ``path``."""

    def fetch(self, path: str, first: int, last: int) -> bytes:
        """The bytes of the range, or raise ``DownloadFailed``."""
        ...


class HttpRangeFetcher:
    """:class:`RangeFetcher` over httpx, authenticated as the device."""

    def __init__(
        self,
        base_url: str,
        *,
        username: str,
        password: str,
        timeout: float = 10.0,
        max_body: int = 1024 * 1024,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """Talk to ``base_url``; ``max_body`` caps how much one answer may carry."""
        self._client = httpx.Client(
            base_url=base_url,
            auth=httpx.BasicAuth(username, password),
            timeout=timeout,
            transport=transport,
        )
        self._max_body = max_body

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def fetch(self, path: str, first: int, last: int) -> bytes:
        """GET one byte range; the body is checked for length, not yet for content.

        Raises:
            DownloadFailed: transport error, an unexpected status, or an answer
                whose range or length is not the one asked for.
        """
        if not path.startswith("/") or path.startswith("//") or not 0 <= first <= last:
            raise DownloadFailed(f"refusing to fetch {path!r} {first}-{last}", permanent=True)
        wanted = last - first + 1
        if wanted > self._max_body:
            raise DownloadFailed(
                f"range of {wanted} bytes exceeds {self._max_body}", permanent=True
            )
        try:
            with self._client.stream("GET", path, headers={"Range": f"bytes={first}-{last}"}) as r:
                self._check_status(r)
                self._check_range(r, first, last)
                body = bytearray()
                for block in r.iter_bytes():
                    body += block
                    if len(body) > wanted:
                        raise DownloadFailed(
                            f"range {first}-{last}: the body is larger than the range",
                            code="payload_too_large",
                            permanent=True,
                        )
        except httpx.HTTPError as exc:
            raise DownloadFailed(f"GET {path}: {exc}", code="http_error") from exc
        if len(body) != wanted:
            raise DownloadFailed(f"range {first}-{last}: {len(body)} of {wanted} bytes")
        return bytes(body)

    @staticmethod
    def _check_status(response: httpx.Response) -> None:
        if response.status_code == 206:
            return
        code = _PERMANENT.get(response.status_code)
        if code is not None:
            raise DownloadFailed(f"HTTP {response.status_code}", code=code, permanent=True)
        raise DownloadFailed(f"HTTP {response.status_code}", code="http_error")

    @staticmethod
    def _check_range(response: httpx.Response, first: int, last: int) -> None:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", "").strip())
        if match is None or (int(match[1]), int(match[2])) != (first, last):
            raise DownloadFailed(
                f"Content-Range {response.headers.get('content-range')!r} is not {first}-{last}",
                code="bad_range",
                permanent=True,
            )


__all__ = ["HttpRangeFetcher", "RangeFetcher"]
