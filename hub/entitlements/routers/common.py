"""Shared router helpers: the after-commit device notification and history pages."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Annotated

from fastapi import BackgroundTasks, Depends, Request

from hub.api.deps import Page, Pagination
from hub.entitlements.models import EntitlementEvent
from hub.entitlements.schemas import HistoryEntryPublic

DevicesChanged = Callable[[frozenset[str]], None]


class Notifier:
    """Schedules ``app.state.on_devices_changed`` for after the response.

    Background tasks run after the request's session has committed (the
    session dependency commits before the response is sent), so the hook
    never sees a change that was rolled back.
    """

    def __init__(self, request: Request, tasks: BackgroundTasks) -> None:
        self._hook: DevicesChanged | None = getattr(request.app.state, "on_devices_changed", None)
        self._tasks = tasks

    def __call__(self, device_ids: Iterable[str]) -> list[str]:
        """Schedule the hook for ``device_ids``; returns them sorted."""
        ids = frozenset(device_ids)
        if ids and self._hook is not None:
            self._tasks.add_task(self._hook, ids)
        return sorted(ids)


def get_notifier(request: Request, tasks: BackgroundTasks) -> Notifier:
    """The request's :class:`Notifier`."""
    return Notifier(request, tasks)


NotifyDep = Annotated[Notifier, Depends(get_notifier)]


def history_page(
    result: tuple[list[EntitlementEvent], int], page: Pagination
) -> Page[HistoryEntryPublic]:
    """Wrap a history query result in a page."""
    items, total = result
    return Page[HistoryEntryPublic](
        items=[HistoryEntryPublic.model_validate(e) for e in items],
        total=total,
        limit=page.limit,
        offset=page.offset,
    )
