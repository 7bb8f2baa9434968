"""The resources beside sandboxes, assembled over the plane: volumes, snapshots, secrets,
warm pools, signed previews and signing keys, per-sandbox settings. The plane creates
one `ResourcePlane`; it hooks volumes and secrets into sandbox creation and signing keys
into the proxy's registry, and hands its routes to the app."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from starlette.routing import BaseRoute

from controlplane.previews import routes as preview_routes
from controlplane.previews.service import PreviewService
from controlplane.sandboxsettings import routes as settings_routes
from controlplane.sandboxsettings.service import SandboxSettings
from controlplane.secrets import routes as secret_routes
from controlplane.secrets.records import SecretRecords
from controlplane.secrets.service import SecretService
from controlplane.snapshots import routes as snapshot_routes
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
        self.snapshots = SnapshotService()
        self.secrets = SecretService(SecretRecords(plane.engine))
        self.previews = PreviewService(plane.sandboxes, plane.records, plane.view, plane.config.preview_secret)
        self.settings = SandboxSettings(plane.sandboxes, plane.records, self.secrets, plane.backend)
        backend = plane.backend
        pools: PoolBackend | None = backend if hasattr(backend, "set_pool_size") else None  # type: ignore[assignment]
        self.warm_pools = WarmPoolService(plane.engine, pools, getattr(backend, "initial_pool_size", 0))
        plane.sandboxes.hooks.extend([self.volumes, self.secrets, self.previews])
        plane.view.decorators.append(self.previews.decorate)
        self.secrets.listeners.append(self.settings.reapply)

    async def open(self) -> None:
        orphans = await self.volumes.sweep()
        if orphans:
            log.warning("removed %d volume directories without a record: %s", len(orphans), ", ".join(orphans))
        await self.warm_pools.open()

    def routes(self) -> list[BaseRoute]:
        urls = self.plane.urls
        return [
            *volume_routes.routes(self.volumes),
            *snapshot_routes.routes(self.snapshots),
            *secret_routes.routes(self.secrets),
            *warm_pool_routes.routes(self.warm_pools),
            *preview_routes.routes(self.previews, urls),
            *settings_routes.routes(self.settings, urls),
        ]
