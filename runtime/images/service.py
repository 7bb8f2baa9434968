"""Image builds for the control plane over the local runtime's snapshot store: a build
makes a snapshot of the store (`controlplane.backend.ImageBuilder`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runtime.images.builder import Base, Builder, plan
from runtime.images.dockerfile import DockerfileError
from runtime.images.oci import ImageConfig, ImageImporter
from runtime.images.steps import Confinement
from runtime import uids
from runtime.private import private_dir, write_private
from runtime.snapshots import SnapshotStore

Log = Callable[[str], None]


@dataclass(frozen=True)
class BuiltSnapshot:
    size: int
    entrypoint: list[str] | None
    layers: tuple[str, ...]


def build_id_range(images_dir: Path) -> int:
    """The base of this runtime's own range of 65536 host ids for build steps, from the
    host-wide list of ranges (runtime/uids.py): never another runtime's or a sandbox's,
    kept (recorded in `images_dir`) while this state dir exists."""
    private_dir(images_dir)
    record = images_dir / "build-ids.json"
    try:
        base: int | None = int(json.loads(record.read_text())["base"])
    except (OSError, ValueError, KeyError):
        base = None
    base = uids._reserve(uids.HOST_RANGES, images_dir, base)  # noqa: SLF001 -- issue 15 makes it public
    write_private(record, json.dumps({"base": base}).encode())
    return base


class LocalImages:
    def __init__(self, store: SnapshotStore, state_root: Path,
                 confinement: Callable[[], Confinement | None] | None = None) -> None:
        self.store = store
        store.clean_partial()  # the trees of builds a dead process left
        # Image configs beside the layers they describe: stores sharing a layers dir (test
        # stacks, several state dirs) then share imports, not only the layers' records.
        importer = ImageImporter(store, store.layers_dir / ".image-configs")
        self.builder = Builder(store, importer, snapshots=self._snapshot_base, confinement=confinement,
                               id_base=build_id_range(state_root / "images"))

    def _snapshot_base(self, name: str) -> Base | None:
        """FROM an existing snapshot of the store (e.g. `default`)."""
        try:
            snapshot = self.store.get(name)
        except KeyError:
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
        built = await self.builder.build(dockerfile, log, context=context)
        snapshot = self.store.snapshot_of(name, built.layers, user=built.user, env=built.env, workdir=built.workdir,
                                          entrypoint=tuple(built.entrypoint or ()), cmd=tuple(built.cmd or ()))
        await asyncio.to_thread(self.store.put, snapshot)
        return BuiltSnapshot(snapshot.size, built.entrypoint, built.layers)

    async def remove(self, name: str, in_use: set[str] | None) -> None:
        """Forget snapshot `name`; its layers go once nothing in `in_use` (the layers of
        sandboxes that still exist) needs them. None: that is not known, every layer stays."""
        def work() -> None:
            try:
                self.store.delete(name)
            except KeyError:
                pass
            if in_use is not None:
                self.store.collect(in_use)

        await asyncio.to_thread(work)

