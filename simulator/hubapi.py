"""The hub's REST API as the simulator uses it: an operator's calls, retried across restarts.

Nothing here touches the hub's internals: every call is HTTP against
``/api/v1`` with a tenant API key, exactly what ``hub`` CLI commands do. Calls
are retried while the hub is down (a fault may have killed it) until a
deadline; an HTTP error answer is raised at once as :class:`HubApiError`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import httpx

log = logging.getLogger(__name__)

PAGE = 500


NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
"""Transport errors raised before a request reached the hub: always safe to send again."""


class HubApiError(RuntimeError):
    """The hub answered with an error, or did not answer before the deadline.

    Attributes:
        status: The HTTP status of an error answer (``None``: no answer).
        maybe_applied: The request may have reached the hub and taken effect
            (its answer was lost); never resent blindly.
        in_flight: That request may still be running on the hub (a read
            timeout): asking whether it took effect proves nothing yet.
    """

    def __init__(
        self,
        message: str,
        status: int | None = None,
        *,
        maybe_applied: bool = False,
        in_flight: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.maybe_applied = maybe_applied
        self.in_flight = in_flight


class HubApi:
    """An async client for one tenant of one hub."""

    def __init__(
        self,
        api_url: str,
        key: str,
        *,
        concurrency: int = 8,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """A client of ``api_url`` with API key ``key`` (``transport``: tests inject one)."""
        self._client = httpx.AsyncClient(
            base_url=f"{api_url.rstrip('/')}/api/v1",
            headers={"Authorization": f"Bearer {key}"},
            timeout=60.0,
            limits=httpx.Limits(max_connections=concurrency),
            transport=transport,
        )
        self._slots = asyncio.Semaphore(concurrency)
        self.calls = 0
        self.server_errors = 0

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        retry_for: float = 120.0,
        resend: bool = True,
        **kwargs: Any,
    ) -> Any:
        """One call; connection failures are retried for ``retry_for`` seconds.

        With ``resend=False`` (a call that is not idempotent) only failures
        before the request reached the hub are retried: a lost answer raises
        at once with ``maybe_applied`` (see :meth:`create_once`).

        Raises:
            HubApiError: an error answer, or no answer before the deadline.
        """
        deadline = time.monotonic() + retry_for
        delay = 0.2
        while True:
            try:
                async with self._slots:
                    self.calls += 1
                    response = await self._client.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if not resend and not isinstance(exc, NOT_SENT):
                    raise HubApiError(
                        f"{method} {path}: the answer was lost ({exc!r}); it may have been applied",
                        maybe_applied=True,
                        in_flight=isinstance(exc, httpx.TimeoutException),
                    ) from exc
                if time.monotonic() + delay > deadline:
                    raise HubApiError(f"{method} {path}: hub unreachable: {exc}") from exc
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)
                continue
            if response.status_code >= 500 and time.monotonic() + delay < deadline:
                # A hub bug or overload (e.g. SQLite "database is locked"): counted, retried.
                self.server_errors += 1
                log.warning("%s %s: %d, retrying", method, path, response.status_code)
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)
                continue
            if response.status_code >= 400:
                raise HubApiError(
                    f"{method} {path}: {response.status_code} {response.text[:300]}",
                    response.status_code,
                )
            return response.json() if response.content else None

    async def get_bytes(self, path: str, *, retry_for: float = 120.0) -> bytes:
        """GET ``path`` and return the raw body (e.g. a signed envelope).

        Raises:
            HubApiError: an error answer, or no answer before the deadline.
        """
        deadline = time.monotonic() + retry_for
        while True:
            try:
                async with self._slots:
                    self.calls += 1
                    response = await self._client.get(path)
            except httpx.TransportError as exc:
                if time.monotonic() > deadline:
                    raise HubApiError(f"GET {path}: hub unreachable: {exc}") from exc
                await asyncio.sleep(0.5)
                continue
            if response.status_code >= 400:
                raise HubApiError(f"GET {path}: {response.status_code}", response.status_code)
            return response.content

    async def create_once(
        self,
        method: str,
        path: str,
        find: Callable[[], Awaitable[Any | None]],
        *,
        retry_for: float = 120.0,
        **kwargs: Any,
    ) -> Any:
        """A call that must take effect once, retried across hub restarts.

        A request whose answer was lost (the hub died after its commit) may
        have been applied. So after such a failure ``find`` asks the hub
        whether the thing exists before the request is sent again. After a
        read timeout the first request may still be running on the hub, so
        it is never sent again: ``find`` is asked until the deadline. Failures
        before the request reached the hub are retried; an error answer (4xx,
        a rolled-back 5xx) is final or safe to repeat.

        Raises:
            HubApiError: an error answer, or no answer before the deadline,
                or a timed-out request that ``find`` never found.
        """
        deadline = time.monotonic() + retry_for
        while True:
            left = max(0.0, deadline - time.monotonic())
            try:
                return await self.request(method, path, retry_for=left, resend=False, **kwargs)
            except HubApiError as exc:
                if not exc.maybe_applied and (
                    (exc.status is not None and exc.status < 500) or time.monotonic() > deadline
                ):
                    raise
                log.warning("%s %s: %s; checking whether it was applied", method, path, exc)
                found = await self._look_up(find, deadline, patient=exc.in_flight)
                if found is not None:
                    return found
                if exc.in_flight:
                    raise HubApiError(
                        f"{method} {path} timed out and never showed up; not sent again"
                        " (it may still be applied)"
                    ) from exc
                if time.monotonic() > deadline:
                    raise

    async def _look_up(
        self, find: Callable[[], Awaitable[Any | None]], deadline: float, *, patient: bool
    ) -> Any | None:
        """``find()`` once the hub answers; ``patient``: asked again until the deadline."""
        while True:
            await asyncio.sleep(0.5)
            found = await self.request_or_none(find, deadline)
            if found is not None or not patient or time.monotonic() > deadline:
                return found

    async def post_once(
        self, path: str, body: Any, find: Callable[[], Awaitable[Any | None]], **kwargs: Any
    ) -> Any:
        """POST ``body`` to ``path`` exactly once (:meth:`create_once` with ``find``)."""
        return await self.create_once("POST", path, find, json=body, **kwargs)

    async def request_or_none(
        self, find: Callable[[], Awaitable[Any | None]], deadline: float
    ) -> Any | None:
        """``await find()``, retried while the hub does not answer (until ``deadline``)."""
        while True:
            try:
                return await find()
            except HubApiError as exc:
                if (exc.status is not None and exc.status < 500) or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)

    async def get(self, path: str, **kwargs: Any) -> Any:
        """GET ``path``."""
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        """POST ``body`` as JSON to ``path``."""
        return await self.request("POST", path, json=body, **kwargs)

    async def optional_get(self, path: str, **kwargs: Any) -> Any | None:
        """GET ``path``; ``None`` when the hub has no such route (404/405)."""
        try:
            return await self.get(path, **kwargs)
        except HubApiError as exc:
            if exc.status in (404, 405):
                return None
            raise

    async def all_pages(self, path: str, params: dict[str, Any] | None = None) -> list[Any]:
        """Every item of a paginated listing."""
        items: list[Any] = []
        offset = 0
        while True:
            page = await self.get(path, params={**(params or {}), "limit": PAGE, "offset": offset})
            items.extend(page["items"])
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return items

    async def gather(self, calls: Iterable[Any]) -> list[Any]:
        """Run coroutines concurrently (bounded by the client's concurrency)."""
        return list(await asyncio.gather(*calls))
