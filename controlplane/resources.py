"""The resources beside sandboxes, assembled over the plane: volumes, snapshots, secrets,
warm pools, signed previews and signing keys, per-sandbox settings. The plane creates
one `ResourcePlane`; it hooks volumes and secrets into sandbox creation and signing keys
into the proxy's registry, and hands its routes to the app."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio
from starlette.routing import BaseRoute

from controlplane.backend import ImageBuilder
from controlplane.events import room
from controlplane.objectstorage import routes as storage_routes
from controlplane.objectstorage.service import ObjectStorage

from controlplane.previews import routes as preview_routes
from controlplane.previews.service import PreviewService
from controlplane.sandboxsettings import routes as settings_routes
from controlplane.sandboxsettings.service import SandboxSettings
from controlplane.secrets import routes as secret_routes
from controlplane.secrets.records import SecretRecords
from controlplane.secrets.service import SecretService
from controlplane.snapshots import routes as snapshot_routes
from controlplane.snapshots.contexts import BuildContexts
from controlplane.snapshots.logs import BuildLogs
from controlplane.snapshots.records import SnapshotRecord, SnapshotRecords
from controlplane.snapshots.service import SnapshotService
from controlplane.volumes import routes as volume_routes
from controlplane.volumes.records import VolumeRecords
from controlplane.volumes.service import VolumeService
from controlplane.volumes.storage import VolumeStorage
from controlplane.warmpools import routes as warm_pool_routes
from controlplane.warmpools.service import PoolBackend, WarmPoolService

if TYPE_CHECKING:
    from controlplane.plane import ControlPlane

log = logging.getLogger("controlplane.resources")


class ResourcePlane:
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.volumes = VolumeService(VolumeRecords(plane.engine), plane.records,
                                     VolumeStorage(plane.config.state_dir / "volumes"))
        backend_images: ImageBuilder | None = getattr(plane.backend, "images", None)
        state = plane.config.state_dir
        self.object_storage = ObjectStorage(state / "object-storage")
        self.contexts = BuildContexts(self.object_storage.storage, state / "build-contexts")
        self.snapshots = SnapshotService(SnapshotRecords(plane.engine), BuildLogs(state / "build-logs"),
                                         backend_images,
                                         contexts=None if self.object_storage.why else self.contexts)
        self.snapshots.listeners.append(self._snapshot_event)
        plane.sandboxes.snapshots = self.snapshots
        self.secrets = SecretService(SecretRecords(plane.engine))
        self.previews = PreviewService(plane.sandboxes, plane.records, plane.view, plane.config.preview_secret)
        self.settings = SandboxSettings(plane.sandboxes, plane.records, self.secrets, plane.backend)
        backend = plane.backend
        pools: PoolBackend | None = backend if hasattr(backend, "set_pool_size") else None  # type: ignore[assignment]
        self.warm_pools = WarmPoolService(plane.engine, pools, getattr(backend, "initial_pool_size", 0))
        plane.sandboxes.hooks.extend([self.volumes, self.secrets, self.previews])
        plane.view.decorators.append(self.previews.decorate)
        self.secrets.listeners.append(self.settings.reapply)

    async def _snapshot_event(self, event: str, record: SnapshotRecord | None, old: str | None,
                              new: str | None) -> None:
        """Daytona's snapshot events (§2.3.2) to the snapshot's organization."""
        if record is None or not record.organization_id:
            return
        dto = snapshot_routes.snapshot_dto(record)
        payload = {"snapshot": dto, "oldState": old, "newState": new} if event == "snapshot.state.updated" else dto
        await self.plane.events.server.emit(event, payload, room=room(record.organization_id))

    async def close(self) -> None:
        await self.snapshots.close()
        await self.object_storage.close()  # after the builds: they read uploads back

    async def open(self) -> None:
        await anyio.to_thread.run_sync(self.contexts.clean)
        await self.object_storage.open()
        await self.snapshots.open()
        orphans = await self.volumes.sweep()
        if orphans:
            log.warning("removed %d volume directories without a record: %s", len(orphans), ", ".join(orphans))
        await self.warm_pools.open()

    def routes(self) -> list[BaseRoute]:
        from controlplane.app import API_PREFIX  # the app imports the plane, which imports this

        urls = self.plane.urls
        return [
            *volume_routes.routes(self.volumes),
            *snapshot_routes.routes(self.snapshots, self.plane.sandboxes, f"{urls.base}{API_PREFIX}"),
            *secret_routes.routes(self.secrets),
            *storage_routes.routes(self.object_storage),
            *warm_pool_routes.routes(self.warm_pools),
            *preview_routes.routes(self.previews, urls),
            *settings_routes.routes(self.settings, urls),
        ]
