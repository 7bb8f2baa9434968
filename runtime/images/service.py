"""Image builds for the control plane over the local runtime's snapshot store: a build
makes a snapshot of the store (`controlplane.backend.ImageBuilder`).

A build holds every layer it uses until its snapshot is recorded (`SnapshotStore.holding`),
so a `collect` meanwhile (a snapshot deleted, a sandbox gone) never takes one from it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runtime.images.builder import Base, Builder, plan
from runtime.images.dockerfile import DockerfileError
from runtime.images.oci import ImageConfig, ImageImporter
from runtime.images.steps import Confinement
from runtime import uids
from runtime.snapshots import SnapshotStore

Log = Callable[[str], None]
logger = logging.getLogger("runtime.images")


@dataclass(frozen=True)
class BuiltSnapshot:
    size: int
    entrypoint: list[str] | None
    layers: tuple[str, ...]


class LocalImages:
    def __init__(self, store: SnapshotStore, state_root: Path,
                 confinement: Callable[[], Confinement | None] | None = None,
                 in_use: Callable[[], set[str]] | None = None) -> None:
        self.store = store
        # Every existing sandbox's layers (read under the store's lock, from a worker
        # thread); None: not known, so no layer is ever freed.
        self.in_use = in_use
        store.clean_partial()  # the trees of builds a dead process left
        # Image configs beside the layers they describe: stores sharing a layers dir (test
        # stacks, several state dirs) then share imports, not only the layers' records.
        importer = ImageImporter(store, store.layers_dir / ".image-configs")
        # Every build its own range of host ids, from the host-wide list sandboxes take
        # theirs from, recorded under this state dir and so never handed out again while it
        # exists: two builds at once (any organizations) never run as the same host uids.
        self.builder = Builder(store, importer, snapshots=self._snapshot_base, confinement=confinement,
                               id_ranges=lambda: uids.sandbox_range(state_root))

    def _snapshot_base(self, name: str) -> Base | None:
        """FROM an existing snapshot of the store (e.g. `default`)."""
        try:
            snapshot = self.store.get(name)
        except KeyError:
            return None
        if not self.store.hold(snapshot.layers):  # deleted meanwhile
            return None
        config = ImageConfig(env=dict(snapshot.env), workdir=snapshot.workdir, user=snapshot.user,
                             entrypoint=list(snapshot.entrypoint) or None, cmd=list(snapshot.cmd) or None)
        return Base(f"snapshot:{','.join(snapshot.layers)}", snapshot.layers, config, build_user="root")

    def environment(self, name: str) -> dict[str, str]:
        """The image's ENV, which a sandbox of the snapshot starts with (its own env wins)."""
        try:
            return dict(self.store.get(name).env)
        except KeyError:
            return {}

    def check(self, dockerfile: str, *, has_context: bool = False) -> str | None:
        """Why this Dockerfile cannot be built here, or None."""
        try:
            plan(dockerfile, has_context=has_context)
        except DockerfileError as exc:
            return str(exc)
        return None

    async def build(self, name: str, dockerfile: str, log: Log, context: Path | None = None) -> BuiltSnapshot:
        """Build and record snapshot `name` in the store (COPY from `context`); BuildError says why not."""
        with self.store.holding():
            built = await self.builder.build(dockerfile, log, context=context)
            snapshot = self.store.snapshot_of(name, built.layers, user=built.user, env=built.env,
                                              workdir=built.workdir, entrypoint=tuple(built.entrypoint or ()),
                                              cmd=tuple(built.cmd or ()))
            put = asyncio.ensure_future(asyncio.to_thread(self.store.put, snapshot))
            try:
                await asyncio.shield(put)
            except asyncio.CancelledError:
                # Cancelled (its snapshot deleted) while being recorded: the thread still
                # writes it, so let it finish, then forget it.
                await asyncio.wait([put])
                await asyncio.to_thread(self._forget, name)
                raise
        return BuiltSnapshot(snapshot.size, built.entrypoint, built.layers)

    async def remove(self, name: str) -> None:
        """Forget snapshot `name`; its layers go once no sandbox that still exists needs them."""
        await asyncio.to_thread(self._forget, name)
        await self.collect()

    def _forget(self, name: str) -> None:
        with contextlib.suppress(KeyError):
            self.store.delete(name)

    async def collect(self) -> None:
        """Free the layers nothing uses any more. Called when a snapshot or a sandbox goes."""
        if self.in_use is None:
            return
        try:
            gone = await asyncio.to_thread(self.store.collect, self.in_use)
        except OSError as exc:  # disk trouble: the layers stay, for the next collect
            logger.warning("could not free unused layers: %s", exc)
            return
        if gone:
            logger.info("freed %d unused layer(s): %s", len(gone), " ".join(d[:12] for d in gone))

