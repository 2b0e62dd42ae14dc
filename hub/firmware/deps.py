"""What the firmware routers take from the app: signer, blob store, limits, publishing.

``hub serve`` sets ``app.state.hub_context`` (keys, publish, session factory);
apps built with plain :func:`hub.app.create_app` (unit tests) have none, so
each helper falls back: the signer to ``app.state.firmware_signer`` or the key
file in the data directory, the store to ``data_dir/blobs``, and publishing
and engine kicks to nothing (tests drive the engine themselves).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any

from fastapi import BackgroundTasks, Depends, Request

from hub.firmware.blobs import BlobStore, LocalBlobStore
from hub.firmware.catalogue import MAX_PACKAGE_BYTES, Uploader, UploadLimits
from hub.mqtt.outbound import Outbound
from hub.plugins import HubContext
from hub.rollouts.engine import RolloutEngine
from hub.settings import Settings
from provisioning.signer import Signer, load_or_create_file_signer


def hub_context(request: Request) -> HubContext | None:
    """The running hub's context, or ``None`` in a bare app."""
    context = getattr(request.app.state, "hub_context", None)
    return context if isinstance(context, HubContext) else None


def _state(request: Request) -> Any:
    return request.app.state


def firmware_signer(request: Request) -> Signer:
    """The firmware catalogue key's signer (never the manifest key)."""
    context = hub_context(request)
    if context is not None:
        return context.keys.firmware
    state = _state(request)
    signer: Signer | None = getattr(state, "firmware_signer", None)
    if signer is None:
        settings: Settings = state.settings
        signer = load_or_create_file_signer(settings.keys_dir / "firmware.pem")
        state.firmware_signer = signer
    return signer


def blob_store(request: Request) -> BlobStore:
    """The payload store: ``app.state.firmware_blobs`` or the local disk under ``data_dir``."""
    state = _state(request)
    store: BlobStore | None = getattr(state, "firmware_blobs", None)
    if store is None:
        settings: Settings = state.settings
        store = LocalBlobStore(settings.data_dir / "blobs")
        state.firmware_blobs = store
    return store


def upload_limits(request: Request) -> UploadLimits:
    """The payload cap (``app.state.firmware_max_bytes`` overrides it) and the MQTT cap."""
    state = _state(request)
    settings: Settings = state.settings
    return UploadLimits(
        max_bytes=getattr(state, "firmware_max_bytes", MAX_PACKAGE_BYTES),
        max_payload_bytes=settings.max_payload_bytes,
    )


def uploader(request: Request) -> Uploader:
    """Store, signer and limits of an upload."""
    return Uploader(
        store=blob_store(request), signer=firmware_signer(request), limits=upload_limits(request)
    )


Publish = Callable[[Sequence[Outbound]], None]


def publisher(request: Request, background: BackgroundTasks) -> Publish:
    """Publish messages once the response (and so the request's commit) is done."""
    context = hub_context(request)

    def publish(out: Sequence[Outbound]) -> None:
        if context is not None and out:
            background.add_task(context.publish, list(out))

    return publish


Kick = Callable[[str], None]


def engine_kick(request: Request, background: BackgroundTasks) -> Kick:
    """Run the rollout engine for one rollout after the response (offers go out at once)."""
    context = hub_context(request)

    def kick(rollout_id: str) -> None:
        if context is None:
            return
        engine = RolloutEngine(
            session_factory=context.session_factory, clock=context.clock, publish=context.publish
        )
        background.add_task(engine.step, rollout_id)

    return kick


UploaderDep = Annotated[Uploader, Depends(uploader)]
BlobStoreDep = Annotated[BlobStore, Depends(blob_store)]
PublishDep = Annotated[Publish, Depends(publisher)]
KickDep = Annotated[Kick, Depends(engine_kick)]
