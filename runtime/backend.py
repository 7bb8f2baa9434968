"""`LocalBackend`: the control plane's `SandboxBackend` over the local bwrap runtime.

Maps Daytona's units onto the runtime's limits (cpu -> cpus, memory GiB -> MiB); the warm
pool stays the runtime's. Disk (GiB) is the sandbox's quota when the runtime gives sandboxes
their own root (RUNTIME_ROOTFS=snapshot: a disk image of that size, docs/runtime.md), and
only recorded otherwise.
"""

from __future__ import annotations

import asyncio
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from controlplane.backend import (
    BackendError,
    CreateRequest,
    Existence,
    Resources,
)
from runtime.images.service import LocalImages
from runtime.images.steps import Confinement
from runtime.limits import Limits
from runtime.manager import Runtime, SandboxError
from runtime.sandbox import SandboxDir
from runtime.snapshots import SnapshotStore
from runtime.volumes import Mount


def _limits(runtime: Runtime, resources: Resources) -> Limits:
    if resources == Resources():
        # Nothing asked for: the runtime's own defaults (`up --cpus/--memory`), which
        # its warm pool was started with.
        return runtime.default_limits
    try:
        return Limits(cpus=float(resources.cpu), memory_mib=resources.memory * 1024,
                      pids=runtime.default_limits.pids)
    except ValueError as exc:
        raise BackendError(400, str(exc)) from None


class LocalBackend:
    def __init__(self, runtime: Runtime, snapshots: SnapshotStore | None = None) -> None:
        self.runtime = runtime
        self.initial_pool_size = runtime.pool_size  # the warm pools' floor
        # Image builds (controlplane.backend.ImageBuilder) need root: idmapped mounts.
        self.images: LocalImages | None = None
        if os.geteuid() == 0:
            store = snapshots or getattr(runtime, "snapshots", None) or SnapshotStore(runtime.root)
            # Build steps get the runtime's cgroup backend, default sandbox limits and a
            # sandbox's network (never the host's: runtime/images/stepnet.py).
            self.images = LocalImages(store, runtime.root, lambda: Confinement(
                runtime.backend, runtime.default_limits, f"{runtime._group_prefix}build-",
                runtime.step_networks()), in_use=self._sandbox_layers)

    async def create(self, request: CreateRequest) -> None:
        mounts = [Mount(source=Path(m.source), target=m.target, read_only=m.read_only)
                  for m in request.mounts]
        limits = _limits(self.runtime, request.resources)
        kwargs: dict[str, Any] = {}
        if self.runtime.rootfs_mode == "snapshot":
            kwargs.update(snapshot=request.snapshot, disk_gib=float(request.resources.disk))
        if self.runtime.net is not None:
            # Its own address with NAT egress (runtime/network.py); block-all is a policy.
            kwargs.update(egress="nat", block_all=not request.network, allow_list=request.allow_list,
                          domain_allow_list=request.domain_allow_list, link_to=request.link_to,
                          link_names=request.link_names)
        elif request.allow_list or request.domain_allow_list or request.link_to:
            what = ("linkedSandbox" if request.link_to else
                    "networkAllowList" if request.allow_list else "domainAllowList")
            raise BackendError(400, f"{what} needs sandboxes with their own network, which "
                                    "this runtime cannot give (it runs without root or nftables)")
        else:
            # Without root: loopback only, or the host's network when asked (docs/runtime.md).
            kwargs["egress"] = "host" if request.network else "none"
        if request.snapshot != "default" and self.runtime.rootfs_mode != "snapshot":
            raise BackendError(400, f"snapshot {request.snapshot!r} needs sandboxes with their own root "
                                    "(RUNTIME_ROOTFS=snapshot); on the host's root only the default snapshot runs")
        env = request.env
        if request.snapshot != "default" and self.images is not None:
            env = {**self.images.environment(request.snapshot), **request.env}  # the image's ENV
        try:
            # A hold over the snapshot's layers until the sandbox's spec names them: a
            # snapshot deleted meanwhile cannot have them freed under it.
            with self.images.store.holding() if self.images is not None else nullcontext():
                await self.runtime.create(request.sandbox_id, env=env, limits=limits, mounts=mounts,
                                          **kwargs)
        except SandboxError as exc:
            raise BackendError(exc.status, exc.message) from None
        except OSError as exc:  # the host side (state dir, sockets): say which, not just the class
            raise BackendError(500, f"the runtime cannot set the sandbox up: {exc}") from None

    @property
    def default_network_block_all(self) -> bool:
        # Daytona's default is egress on; without a network of their own sandboxes would get
        # the host's network for it, so there block-all stays the default.
        return self.runtime.network_block_all if self.runtime.net is not None else True

    async def set_network(self, sandbox_id: str, block_all: bool, allow_list: tuple[str, ...],
                          domain_allow_list: tuple[str, ...] = ()) -> None:
        try:
            await self.runtime.set_network(sandbox_id, block_all=block_all, allow_list=allow_list,
                                           domain_allow_list=domain_allow_list)
        except SandboxError as exc:
            raise BackendError(exc.status, exc.message) from None

    def preview_address(self, sandbox_id: str) -> str | None:
        """The sandbox's own address, for previews in one hop (None: through the daemon)."""
        spec = self.runtime.specs.get(sandbox_id)
        return spec.address if spec is not None and spec.egress == "nat" else None

    async def start(self, sandbox_id: str) -> None:
        try:
            await self.runtime.start(sandbox_id)
        except SandboxError as exc:
            raise BackendError(exc.status, exc.message) from None

    async def stop(self, sandbox_id: str) -> None:
        if sandbox_id not in self.runtime.specs:
            return
        await self.runtime.stop(sandbox_id)

    async def destroy(self, sandbox_id: str) -> None:
        if sandbox_id not in self.runtime.specs:
            # Idempotent, and it also sweeps what a create that failed half-way left on disk.
            await asyncio.to_thread(SandboxDir(self.runtime.sandboxes_dir / sandbox_id).remove)
            return
        await self.runtime.delete(sandbox_id)
        if self.images is not None:
            # Its layers may have been a deleted snapshot's last user: free what nothing uses.
            await self.images.collect()

    async def archive(self, sandbox_id: str) -> None:
        try:
            await self.runtime.archive(sandbox_id)
        except SandboxError as exc:
            raise BackendError(exc.status, exc.message) from None

    async def resize(self, sandbox_id: str, resources: Resources) -> None:
        try:
            await self.runtime.resize(sandbox_id, _limits(self.runtime, resources),
                                      disk_gib=float(resources.disk))
        except SandboxError as exc:
            raise BackendError(exc.status, exc.message) from None

    async def status(self) -> dict[str, Existence]:
        out: dict[str, Existence] = {}
        for sandbox_id, spec in list(self.runtime.specs.items()):
            if sandbox_id in self.runtime.running:
                out[sandbox_id] = Existence.STARTED
            elif spec.state == "archived":
                out[sandbox_id] = Existence.ARCHIVED
            else:
                out[sandbox_id] = Existence.STOPPED
        return out

    def address(self, sandbox_id: str) -> str:
        return f"unix:{self.runtime.socket_path(sandbox_id)}"

    def peer_uid(self, sandbox_id: str) -> int | None:
        spec = self.runtime.specs.get(sandbox_id)
        return spec.uid if spec is not None else None

    # -- beyond the SandboxBackend protocol: optional capabilities the resources use ----
    async def set_env(self, sandbox_id: str, env: dict[str, str]) -> None:
        """The environment of the sandbox's next start (secrets changed while it exists)."""
        try:
            await self.runtime.set_env(sandbox_id, env)
        except SandboxError as exc:
            raise BackendError(exc.status, exc.message) from None

    def _sandbox_layers(self) -> set[str]:
        """Every layer a sandbox of this runtime (running, stopped or archived) is made of,
        for `SnapshotStore.collect`; called from a worker thread (list() copies the specs
        in one step under the GIL, as the event loop may add one meanwhile)."""
        return {digest for spec in list(self.runtime.specs.values()) for digest in spec.layers}

    def set_pool_size(self, size: int) -> None:
        """How many sandboxes the runtime keeps warm (the control plane's warm pools)."""
        self.runtime.resize_pool(size)

    def pool_ready(self) -> int:
        """Warm sandboxes ready right now."""
        return sum(1 for r in self.runtime.pool if r.process.returncode is None)
