"""How the firmware package plugs into the hub (see :mod:`hub.plugins`).

- tables: :mod:`hub.firmware.tables` (catalogue and rollouts);
- REST: the catalogue (:mod:`hub.firmware.router`), the devices' ranged
  download (:mod:`hub.firmware.router_device`), rollouts (:mod:`hub.rollouts.router`);
- MQTT: :class:`hub.firmware.delivery.FirmwareHandler` for ``d/{id}/up/firmware``;
- jobs: the rollout engine every :data:`ENGINE_SECONDS` and the blob orphan
  sweep every :data:`SWEEP_SECONDS`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from hub.firmware.blobs import BlobStore, LocalBlobStore
from hub.firmware.catalogue import sweep_orphans
from hub.firmware.delivery import FirmwareHandler
from hub.firmware.router import router as catalogue_router
from hub.firmware.router_device import router as device_router
from hub.plugins import BatchHandler, HubContext, HubPlugin, PeriodicJob
from hub.rollouts.engine import RolloutEngine
from hub.rollouts.router import router as rollouts_router

log = logging.getLogger(__name__)

ENGINE_SECONDS = 5
SWEEP_SECONDS = 3600


def blob_store_of(context: HubContext) -> BlobStore:
    """The payload store the hub uses (the same directory the REST upload writes to)."""
    return LocalBlobStore(context.settings.data_dir / "blobs")


def _inbound(context: HubContext) -> Sequence[BatchHandler]:
    return [FirmwareHandler(store=blob_store_of(context))]


def _jobs(context: HubContext) -> Sequence[PeriodicJob]:
    engine = RolloutEngine(
        session_factory=context.session_factory, clock=context.clock, publish=context.publish
    )
    store = blob_store_of(context)

    def sweep() -> int:
        with context.session_factory() as session:
            removed = sweep_orphans(session, store, context.clock())
        if removed:
            log.info("firmware blob sweep removed %d file(s)", removed)
        return removed

    return [
        PeriodicJob("firmware-rollouts", ENGINE_SECONDS, engine.run),
        PeriodicJob("firmware-blob-sweep", SWEEP_SECONDS, sweep),
    ]


PLUGIN = HubPlugin(
    name="firmware",
    models_module="hub.firmware.tables",
    routers=(catalogue_router, device_router, rollouts_router),
    inbound=_inbound,
    jobs=_jobs,
)
