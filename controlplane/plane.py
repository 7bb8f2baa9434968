"""The control plane assembled: database, keys, sandboxes and the proxy's view, over one
backend. `open()` migrates the schema, makes sure the default organization has a key and
reconciles records with what the backend really has. Its background work (events, policies,
builds) runs in one task group, open from `open()` to the end of `close()`."""

from __future__ import annotations

import logging
import os
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import anyio

from controlplane.auth import DEFAULT_ORGANIZATION, Keys, NewKey, Principal, key_hash
from controlplane.backend import SandboxBackend
from controlplane.errors import ApiError
from controlplane.events import Events
from controlplane.policies import ActivitySource, Policies
from controlplane.proxyview import KeyCheck, ProxyView, VisibleCheck
from controlplane.reconcile import reconcile
from controlplane.sandboxes.records import SandboxRecords
from controlplane.sandboxes.routes import PublicUrls
from controlplane.sandboxes.service import SandboxService
from controlplane.store.db import migrate, open_engine, sqlite_url
from runtime.registry import FileRegistry
from toolbox.tasks import BackgroundTask, TaskOwner

log = logging.getLogger("controlplane")

DATABASE_URL_ENV = "CONTROLPLANE_DATABASE_URL"
MINUTE_ENV = "CONTROLPLANE_MINUTE_SECONDS"


@dataclass
class PlaneConfig:
    state_dir: Path
    urls: PublicUrls
    registry_path: Path
    database_url: str | None = None  # default: SQLite at STATE/controlplane.db
    default_auto_stop: int = 15  # minutes, for sandboxes created without autoStopInterval
    # Seconds in a policy minute: 60, except where a test or demo wants policies to act fast.
    minute: float = float(os.environ.get(MINUTE_ENV) or 60)
    # The proxy's secret, to mint signed preview URLs the proxy verifies (None: 501).
    preview_secret: bytes | None = None

    @property
    def url(self) -> str:
        return self.database_url or os.environ.get(DATABASE_URL_ENV) or sqlite_url(
            self.state_dir / "controlplane.db")


class ControlPlane:
    def __init__(self, config: PlaneConfig, backend: SandboxBackend, visible: VisibleCheck | None = None,
                 activity: ActivitySource | None = None, key_seen: KeyCheck | None = None) -> None:
        self.config = config
        self.urls = config.urls
        self.backend = backend
        self.engine = open_engine(config.url)
        self.keys = Keys(self.engine)
        self.records = SandboxRecords(self.engine)
        self.tasks = TaskOwner()
        self.events = Events(self.keys, config.urls, spawn=self.tasks.spawn)
        self.records.listeners.append(self.events.changed)
        self.view = ProxyView(FileRegistry(config.registry_path), self.records, self.keys, backend, visible,
                              key_seen)
        self.sandboxes = SandboxService(self.records, backend, self.view, spawn=self.tasks.spawn,
                                        default_auto_stop=config.default_auto_stop)
        self.policies = Policies(self, activity, minute=config.minute,
                                 interval=max(0.2, min(5.0, config.minute / 4)))
        self.default_organization = ""
        # (organization, sandbox id) of sandboxes a crash stopped; see reconcile.
        self.interrupted: list[tuple[str, str]] = []
        from controlplane.resources import (
            ResourcePlane,  # after the services it hooks into
        )

        self.resources = ResourcePlane(self)
        self._lifetime = AsyncExitStack()  # what close() undoes, in reverse: see open()
        self._policies: BackgroundTask | None = None

    async def open(self) -> None:
        """Start up; a failure part-way unwinds what was started, as close() does."""
        async with AsyncExitStack() as lifetime:
            lifetime.push_async_callback(self._dispose_engine)
            # Exited after everything below: cancels and awaits whatever of ours still runs.
            await lifetime.enter_async_context(self.tasks.running())
            self.events.start()
            lifetime.push_async_callback(self.events.close)
            # Creates that wait on an image's build end after the builds (recorded as failed).
            lifetime.push_async_callback(self.sandboxes.close)
            lifetime.push_async_callback(self.resources.close)  # running builds end build_failed
            await anyio.to_thread.run_sync(migrate, self.engine)
            self.default_organization = await anyio.to_thread.run_sync(self.keys.ensure_organization,
                                                                       DEFAULT_ORGANIZATION)
            self.events.seed(await anyio.to_thread.run_sync(self.records.all))
            await reconcile(self)
            await self.resources.open()
            await self.view.publish()
            self._lifetime = lifetime.pop_all()

    async def restart_interrupted(self) -> None:
        """Start again, one after the other, the sandboxes that were running when a previous
        main job died; forty cold starts at once would starve everything else."""
        interrupted, self.interrupted = self.interrupted, []
        if interrupted:
            log.warning("restarting %d sandbox(es) a crash stopped: %s", len(interrupted),
                        " ".join(i for _, i in interrupted))
        for organization, sandbox_id in interrupted:
            try:
                await self.sandboxes.start(Principal(organization, "reconcile"), sandbox_id)
            except ApiError as exc:
                log.warning("could not restart %s: %s", sandbox_id, exc.message)

    def run_policies(self) -> None:
        """Auto-stop, auto-archive, auto-delete and periodic reconcile, in the background
        (ended first by close(): nothing may act on sandboxes being stopped)."""
        self._policies = self.tasks.spawn(self.policies.run(), name="policies")
        self._lifetime.push_async_callback(self._stop_policies)

    async def _stop_policies(self) -> None:
        if self._policies is not None:
            self._policies.cancel()
            await self._policies.wait()

    async def close(self) -> None:
        await self._lifetime.aclose()

    async def _dispose_engine(self) -> None:
        await anyio.to_thread.run_sync(self.engine.dispose)

    async def create_key(self, organization: str = DEFAULT_ORGANIZATION) -> NewKey:
        """A new key, which the proxy accepts by the time this returns."""
        created = await anyio.to_thread.run_sync(lambda: self.keys.create_key(organization))
        await self.view.publish()
        await self.view.until_key(created.key, True)
        return created

    async def revoke_key(self, key: str) -> bool:
        """Delete a key; by the time this returns the API, the proxy and MCP refuse it and
        its Socket.IO connections are closed. False if it was not a key."""
        if not await anyio.to_thread.run_sync(self.keys.revoke, key):
            return False
        await self.events.drop_key(key)  # its Socket.IO connections, which authenticated once
        await self.view.publish()
        await self.view.until_key(key, False)
        return True

    async def adopt_key(self, key: str, organization: str = DEFAULT_ORGANIZATION) -> None:
        """Make a key that already exists in plain text (STATE/api-key, --api-key) valid."""
        def work() -> None:
            if self.keys.authenticate(key) is None:
                self.keys.add_hash(organization, key_hash(key))

        await anyio.to_thread.run_sync(work)
        await self.view.publish()
