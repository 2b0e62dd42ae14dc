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
from collections.abc import Iterable
from typing import Any

import httpx

log = logging.getLogger(__name__)

PAGE = 500


class HubApiError(RuntimeError):
    """The hub answered with an error, or did not answer before the deadline."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class HubApi:
    """An async client for one tenant of one hub."""

    def __init__(self, api_url: str, key: str, *, concurrency: int = 8) -> None:
        self._client = httpx.AsyncClient(
            base_url=f"{api_url.rstrip('/')}/api/v1",
            headers={"Authorization": f"Bearer {key}"},
            timeout=60.0,
            limits=httpx.Limits(max_connections=concurrency),
        )
        self._slots = asyncio.Semaphore(concurrency)
        self.calls = 0
        self.server_errors = 0

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def request(
        self, method: str, path: str, *, retry_for: float = 120.0, **kwargs: Any
    ) -> Any:
        """One call; connection failures are retried for ``retry_for`` seconds.

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
