"""The runtime: sandbox lifecycle, the warm pool, the proxy registry and idle auto-stop.

Every sandbox is `bwrap` (own pid, mount, uts, ipc, user and, by default, network
namespace) around `runtime.entry`, inside its own cgroup, running as its own uid when we
are root. Pooled sandboxes have already imported the daemon; `create` claims one, gives it
its id and environment and maps the id to its socket in the registry, then refills the pool
in the background.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from runtime import archive, cgroups, ownroot, seccomp, sockets
from runtime.dns import DnsError, Resolvers, parse_domain_list
from runtime.images.stepnet import StepNetworks
from runtime.network import DEFAULT_RANGE, Network, NetworkError, Slot, parse_allow_list
from runtime.codemount import is_daemon
from runtime.limits import Limits
from runtime.private import DIR_MODE, open_private_append
from runtime.registry import FileRegistry
from runtime.rootcheck import UnsupportedRoot, check_root
from runtime.rootmode import ROOTFS_MODES, default_rootfs_mode
from runtime.snapshots import SnapshotStore
from runtime.sandbox import (
    EGRESS, HOME_INSIDE, TERMINAL_PORT, SandboxDir, SandboxSpec, bwrap_argv,
    new_id, valid_id,
)
from runtime.uids import UidRange, UidsExhausted, sandbox_range
from runtime.volumes import Mount, MountError, OpenedMounts, open_mounts, validate_target
from toolbox.tasks import BackgroundTask, TaskOwner, finish_in_thread, sole_exception

log = logging.getLogger("runtime")

READY_LINE = b"Starting toolbox server"
DAEMON_OOM_SCORE_ADJ = -900
ActivitySource = Callable[[], Awaitable[dict[str, float]]]
# Called with a sandbox id once it is in the registry; returns when the proxy routes it.
VisibleCheck = Callable[[str], Awaitable[None]]
DEFAULT_SNAPSHOT = "default"


class SnapshotLike(Protocol):
    @property
    def layers(self) -> tuple[str, ...]: ...


class SnapshotSource(Protocol):
    """Where sandboxes' root file systems come from (runtime/snapshots.py's SnapshotStore)."""

    def get(self, name: str) -> SnapshotLike: ...

    def layer_path(self, digest: str) -> Path: ...

    def hold(self, layers: tuple[str, ...]) -> bool: ...


@dataclass(frozen=True)
class Root:
    """A sandbox's own root: its snapshot, that snapshot's layers and its ids and disk."""

    snapshot: str
    layers: tuple[str, ...]
    id_base: int
    disk_gib: float


def _tail(path: Path, size: int = 600) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - size))
            return f.read().decode(errors="replace").strip()
    except OSError:
        return "(no log)"


def _oom_score_adj(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        return int(Path(f"/proc/{pid}/oom_score_adj").read_text())
    except (OSError, ValueError):
        return None


def _last_line(path: Path) -> str:
    """The line of a log that usually says why (a traceback's last line), for one-line errors."""
    lines = [line for line in _tail(path, 4096).splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(empty log)"


class SandboxError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Running:
    """A live bwrap process and the cgroup around it."""

    process: asyncio.subprocess.Process
    group: cgroups.Group
    dir: SandboxDir
    uid: int
    gid: int
    started_at: float = field(default_factory=time.time)
    pump: BackgroundTask | None = None
    socket: Path | None = None  # where its listening socket is bound (runtime/sockets.py)
    daemon_pid: int | None = None  # the daemon's pid on the host, once claimed
    slot: Slot | None = None  # its netns, veth and address (egress "nat")
    root: Root | None = None  # its own root (a pooled one: the default snapshot and disk)


class Runtime:
    def __init__(
        self,
        root: Path,
        *,
        pool_size: int = 1,
        limits: Limits | None = None,
        idle_timeout: float = 15 * 60,
        activity: ActivitySource | None = None,
        visible: VisibleCheck | None = None,
        terminal_port: int = TERMINAL_PORT,
        python: str = sys.executable,
        start_timeout: float = 30.0,
        write_registry: bool = True,
        restart_crashed: bool = True,
        network: str | None = DEFAULT_RANGE,
        network_block_all: bool = False,
        dns: str | None = None,
        rootfs_mode: str | None = None,
        snapshots: SnapshotSource | None = None,
        disk_gib: float | None = None,
    ) -> None:
        self.root = root.resolve()
        self.sandboxes_dir = self.root / "sandboxes"
        self.pool_dir = self.root / "pool"
        self.archives_dir = self.root / "archives"
        # Under the control plane, it writes the proxy's registry (with organizations);
        # the runtime then keeps none of its own.
        self.registry: FileRegistry | None = FileRegistry(self.root / "registry.json") if write_registry else None
        self.pool_size = pool_size
        self.default_limits = limits or Limits()
        self.idle_timeout = idle_timeout
        self.activity = activity
        self.visible = visible
        self.terminal_port = terminal_port
        self.python = python
        self.start_timeout = start_timeout
        # A bare runtime restarts what a crash interrupted itself; under the control plane,
        # the control plane decides (controlplane/reconcile.py), so both never race.
        self.restart_crashed = restart_crashed
        self.backend: cgroups.Backend = cgroups.Backend()
        self.specs: dict[str, SandboxSpec] = {}
        self.running: dict[str, Running] = {}
        self.pool: list[Running] = []
        self._uids: set[int] = set()  # held by sandboxes, pooled or being started
        # Sandbox networking (root only; None: loopback-only sandboxes, as without root).
        self.network_range = network
        self.network_block_all = network_block_all  # the default for new sandboxes
        self.dns = dns
        self.net: Network | None = None
        self._slots: set[int] = set()  # address slots held by sandboxes and the pool
        self._slot_lock = asyncio.Lock()
        self._step_networks: StepNetworks | None = None
        self.uid_range: UidRange | None = None  # as root: this runtime's own uids (runtime/uids.py)
        # "host": bwrap over the host's read-only root; "snapshot": each sandbox its own
        # root, root inside and a disk quota (runtime/rootlauncher.py).
        self.rootfs_mode = rootfs_mode or default_rootfs_mode()
        if self.rootfs_mode not in ROOTFS_MODES:
            raise SandboxError(400, f"invalid root file system mode {self.rootfs_mode!r}: one of "
                                    f"{', '.join(ROOTFS_MODES)}")
        self.snapshots = snapshots
        # The runtime's own default quota (GiB); the control plane passes Daytona's `disk`.
        self.default_disk_gib = disk_gib or float(os.environ.get("RUNTIME_DISK_GIB", "2"))
        self._locks: dict[str, asyncio.Lock] = {}
        # Background work (the pool's refill, idle stops, recovery, discards, the daemons'
        # output pumps) runs in one task group, open from open() to the end of close().
        self._tasks = TaskOwner()
        self._loops: set[BackgroundTask] = set()  # cancelled by close() before any sandbox stops
        self._chores: set[BackgroundTask] = set()  # a discard or a stop: close() waits for them
        self._lifetime = AsyncExitStack()
        self._pool_wakeup = asyncio.Event()
        self._closed = False
        self._oom_warned = False

    @property
    def _group_prefix(self) -> str:
        # Runtimes with different state dirs share the cgroup parent; each owns its prefix.
        return "sbx-" + hashlib.sha256(str(self.root).encode()).hexdigest()[:8] + "-"

    # ---- start and stop the runtime -------------------------------------------------

    async def open(self) -> None:
        """Set up and start the background loops; a failure part-way undoes what was set
        up (the task group, the sandbox network)."""
        async with AsyncExitStack() as lifetime:
            await lifetime.enter_async_context(self._tasks.running())
            await self._open(lifetime)
            self._lifetime = lifetime.pop_all()

    async def _open(self, lifetime: AsyncExitStack) -> None:
        if shutil.which("bwrap") is None:
            raise SandboxError(500, "bubblewrap is not installed: apt-get install bubblewrap")
        for d in (self.root, self.sandboxes_dir, self.pool_dir, self.archives_dir):
            d.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
            os.chmod(d, DIR_MODE)  # tokens inside: no other local user may look
        sockets.ensure_sockets_dir(self.root)
        if os.geteuid() == 0:
            self.uid_range = await asyncio.to_thread(UidRange.open, self.root)
        if self.rootfs_mode == "snapshot":
            await self._open_snapshots()
        # Nothing runs yet, so every socket left there is stale.
        for stale in sockets.sockets_dir(self.root).iterdir():
            sockets.remove(stale)
        self.backend = await asyncio.to_thread(cgroups.detect)
        log.info("resource limits: %s", self.backend.description)
        # Groups left by a runtime on this state dir that died without cleaning up.
        await asyncio.to_thread(self.backend.sweep, self._group_prefix)
        shutil.rmtree(self.pool_dir, ignore_errors=True)  # pooled sandboxes never outlive us
        self.pool_dir.mkdir(mode=DIR_MODE)
        crashed: list[str] = []
        for meta in sorted(self.sandboxes_dir.glob("*/sandbox.json")):
            try:
                spec = SandboxDir(meta.parent).load()
            except (OSError, ValueError, KeyError) as exc:
                log.warning("ignoring %s: %s", meta, exc)
                continue
            if spec.state == "started":
                crashed.append(spec.id)
            if spec.state != "archived":
                spec.state = "stopped"
            self.specs[spec.id] = spec
            self._uids.add(spec.uid)
        # After the specs: the network takes back the blocks their addresses are in.
        await self._open_network([s.address for s in self.specs.values() if s.egress == "nat" and s.address])
        lifetime.push_async_callback(self._close_network)
        for spec in self.specs.values():
            slot = self._slot_of(spec)
            if slot is not None:
                self._slots.add(slot.index)
        if self.uid_range is not None:
            self.uid_range.skip_past(self._uids)
        await asyncio.to_thread(self._sweep_disk)
        if self.registry is not None:
            self.registry.flush()
        self._spawn(self._pool_loop(), "refill the pool", loop=True)
        if self.idle_timeout > 0:
            self._spawn(self._idle_loop(), "stop idle sandboxes", loop=True)
        if crashed and self.restart_crashed:
            self._spawn(self._recover(crashed), "restart crashed sandboxes", loop=True)

    async def _open_snapshots(self) -> None:
        if os.geteuid() != 0:
            raise SandboxError(500, "sandboxes with their own root (RUNTIME_ROOTFS=snapshot) need a "
                                    "runtime running as root (user namespaces, loop devices, mounts)")
        for tool in ("mkfs.ext4", "mount"):
            if shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
                raise SandboxError(500, f"{tool} is missing: apt-get install e2fsprogs mount")
        if self.snapshots is None:
            store = SnapshotStore(self.root)
            await asyncio.to_thread(store.ensure_default, lambda line: log.info("default snapshot: %s", line))
            self.snapshots = store

    def _root_for(self, snapshot: str) -> tuple[str, tuple[str, ...]]:
        if self.snapshots is None:  # a runtime that was never opened: the store, unbuilt
            self.snapshots = SnapshotStore(self.root)
        assert self.snapshots is not None
        try:
            found = self.snapshots.get(snapshot)
        except KeyError:
            raise SandboxError(404, f"snapshot {snapshot!r} not found") from None
        # Into the caller's hold, if it opened one (the control plane's create does), so a
        # collect cannot free them before the sandbox's spec names them.
        if not self.snapshots.hold(tuple(found.layers)):
            raise SandboxError(404, f"snapshot {snapshot!r} was deleted meanwhile (its layers are gone)")
        return snapshot, tuple(found.layers)

    async def _recover(self, sandbox_ids: list[str]) -> None:
        """Start again the sandboxes that were running when a previous runtime died without
        stopping them (SIGKILL, OOM killer, power loss); a clean stop saves them stopped.
        One after the other: forty cold starts at once would starve everything else."""
        log.warning("restarting %d sandbox(es) left running by a runtime that died: %s",
                    len(sandbox_ids), " ".join(sandbox_ids))
        for sandbox_id in sandbox_ids:
            try:
                await self.start(sandbox_id)
            except SandboxError as exc:
                log.warning("could not restart %s: %s", sandbox_id, exc.message)

    async def close(self) -> None:
        """Stop every sandbox and drain the pool; sandboxes stay on disk, stopped."""
        self._closed = True
        # The loops first, so none starts a sandbox while they are stopped; the daemons'
        # pumps keep draining until their sandbox is killed.
        for task in list(self._loops):
            task.cancel()
        await asyncio.gather(*(task.wait() for task in [*self._loops, *self._chores]))
        await asyncio.gather(*(self.stop(i) for i in list(self.running)), return_exceptions=True)
        pool, self.pool = self.pool, []
        await asyncio.gather(*(self._kill(r) for r in pool), return_exceptions=True)
        for r in pool:
            r.dir.remove()
            if r.socket is not None:
                sockets.remove(r.socket)
            self._uids.discard(r.uid)
        await self._lifetime.aclose()  # the network, then the group: cancels and awaits the rest

    async def _close_network(self) -> None:
        net, self.net = self.net, None
        if net is not None:
            # The blocks stopped sandboxes have addresses in stay reserved for them.
            await asyncio.to_thread(net.close, [s.address for s in self.specs.values()
                                                if s.egress == "nat" and s.address])

    async def _open_network(self, addresses: list[str]) -> None:
        if self.network_range is None:
            return
        why = Network.available()
        if why is not None:
            log.info("sandboxes get loopback only (no address of their own): %s", why)
            return
        try:
            net = Network(self.root, self.network_range, resolver=self.dns)
            await asyncio.to_thread(net.open, addresses)
        except NetworkError as exc:
            raise SandboxError(exc.status, f"cannot set up the sandbox network: {exc.message}") from None
        self.net = net
        log.info("sandbox network %s (nftables table inet %s), resolver %s", net.range, net.table,
                 net.resolver or "none")

    @property
    def default_egress(self) -> str:
        return "nat" if self.net is not None else "none"

    def step_networks(self) -> StepNetworks | None:
        """Image build steps' networks: slots of the sandbox network, from the same
        bookkeeping as sandboxes' (runtime/images/stepnet.py). None: steps get none."""
        if self.net is None:
            return None
        if self._step_networks is None or self._step_networks.net is not self.net:
            self._step_networks = StepNetworks(self.net, block_all=self.network_block_all,
                                               allocate=self._allocate_step_slot,
                                               release=lambda slot: self._slots.discard(slot.index))
        return self._step_networks

    async def _allocate_step_slot(self) -> Slot:
        try:
            return await self._allocate_slot()
        except SandboxError as exc:
            raise NetworkError(exc.message, exc.status) from None

    async def _readdress(self, spec: SandboxSpec, target: SandboxDir) -> Slot:
        """A new address for a sandbox whose own this runtime no longer holds (another
        RUNTIME_SANDBOX_NETWORK, or its block went to another runtime while this one was
        down: runtime/netranges.py)."""
        if self.net is None:
            raise SandboxError(409, f"sandbox {spec.id!r} has its own network, which this runtime cannot "
                                    "give it (not root, or no nftables)")
        slot = await self._allocate_slot()
        log.warning("sandbox %s: address %s is no longer this runtime's, now %s", spec.id, spec.address,
                    slot.address)
        spec.address = slot.address
        await asyncio.to_thread(target.save, spec)
        return slot

    def _slot_of(self, spec: SandboxSpec) -> Slot | None:
        if self.net is None or spec.egress != "nat" or spec.address is None:
            return None
        return self.net.slot_of(spec.address)

    async def _allocate_slot(self) -> Slot:
        assert self.net is not None
        async with self._slot_lock:  # the lookup of the host's routes runs in a thread
            try:
                slot = await asyncio.to_thread(self.net.allocate, set(self._slots))
            except NetworkError as exc:
                raise SandboxError(exc.status, exc.message) from None
            self._slots.add(slot.index)
        return slot

    def _sweep_disk(self) -> None:
        """Repair what a crash left: a sandbox directory without a spec (a create that
        never finished), partial or unclaimed archives, originals an archive replaced."""
        for path in self.sandboxes_dir.iterdir():
            if path.is_dir() and not (path / "sandbox.json").exists():
                log.warning("removing %s: a create that never finished", path)
                shutil.rmtree(path, ignore_errors=True)
        not_archived = [i for i, s in self.specs.items() if s.state != "archived"]
        for stale in archive.sweep(self.archives_dir, self.sandboxes_dir, not_archived):
            log.warning("removed a stale archive %s", stale)
        for spec in self.specs.values():
            if spec.state == "archived":
                archive.drop_unpacked(self.sandboxes_dir / spec.id)

    def _spawn(self, coro: Coroutine[Any, Any, object], name: str, *, loop: bool = False) -> None:
        """Background work: a loop, which close() cancels, or a chore (a kill and its clean-up,
        seconds at most), which close() lets finish: cancelled before its first step, a
        discard would leave its sandbox running."""
        kept = self._loops if loop else self._chores
        for task in [task for task in kept if task.done()]:
            kept.discard(task)
        kept.add(self._tasks.spawn(coro, name=name))

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    # ---- lifecycle ------------------------------------------------------------------

    def list(self) -> list[dict[str, object]]:
        return [self.describe(s) for s in sorted(self.specs.values(), key=lambda s: s.created_at)]

    def get(self, sandbox_id: str) -> SandboxSpec:
        spec = self.specs.get(sandbox_id)
        if spec is None:
            raise SandboxError(404, f"sandbox {sandbox_id!r} not found")
        return spec

    def describe(self, spec: SandboxSpec) -> dict[str, object]:
        data = spec.to_json()
        running = self.running.get(spec.id)
        data["socket"] = str(self.socket_path(spec.id))
        data["dir"] = str(self.sandboxes_dir / spec.id)
        if spec.rooted:
            # Host disk its image takes (sparse: what its upper layer holds), for `runtime get`.
            with contextlib.suppress(OSError):
                data["disk_used_bytes"] = ownroot.disk_usage(SandboxDir(self.sandboxes_dir / spec.id).disk)
        if running is not None:
            data["started_at"] = running.started_at
            data["usage"] = running.group.stats()
            data["cgroups"] = [str(d) for d in running.group.dirs]
            data["daemon_pid"] = running.daemon_pid
            data["daemon_oom_score_adj"] = _oom_score_adj(running.daemon_pid)
        return data

    async def create(
        self,
        sandbox_id: str | None = None,
        *,
        env: dict[str, str] | None = None,
        limits: Limits | None = None,
        egress: str | None = None,
        public: bool = False,
        mounts: Sequence[Mount] = (),
        block_all: bool | None = None,
        allow_list: str | Sequence[str] | None = None,
        domain_allow_list: str | Sequence[str] | None = None,
        link_to: str | None = None,
        link_names: Sequence[str] = (),
        snapshot: str | None = None,
        disk_gib: float | None = None,
    ) -> SandboxSpec:
        sandbox_id = sandbox_id or new_id()
        if not valid_id(sandbox_id):
            raise SandboxError(400, f"invalid sandbox id {sandbox_id!r}: use 1-63 lower-case "
                                    "letters, digits and inner dashes")
        egress = egress or self.default_egress
        if egress not in EGRESS:
            raise SandboxError(400, f"invalid egress {egress!r}: one of {', '.join(EGRESS)}")
        if egress == "nat" and self.net is None:
            raise SandboxError(400, "egress 'nat' needs the sandbox network (a runtime running as root "
                                    "with iproute2 and nftables)")
        block_all = self.network_block_all if block_all is None else block_all
        try:
            allowed = parse_allow_list(allow_list)
        except NetworkError as exc:
            raise SandboxError(exc.status, exc.message) from None
        domains = self._domain_list(egress, domain_allow_list)
        if link_to is not None:
            self._check_link(egress, link_to)
        env = {str(k): str(v) for k, v in (env or {}).items()}
        limits = limits or self.default_limits
        mounts = self._check_mounts(mounts)
        wanted = self._wanted_root(snapshot, disk_gib)
        async with self._lock(sandbox_id):
            if sandbox_id in self.specs:
                raise SandboxError(409, f"sandbox {sandbox_id!r} already exists")
            target = SandboxDir(self.sandboxes_dir / sandbox_id)
            # A pooled sandbox was launched without volumes, with the default snapshot and
            # disk: anything else is bound or made at launch. A linked follower's /etc/hosts
            # names its owner: written at launch, so never pooled.
            pooled = (self._take_pooled(wanted) if egress == self.default_egress and not mounts
                      and link_to is None else None)
            root: Root | None = None
            if pooled is not None:
                uid, gid, root = pooled.uid, pooled.gid, pooled.root
            elif wanted is not None:
                root = await self._allocate_root(*wanted)
                uid = gid = root.id_base + ownroot.USER_ID_INSIDE
                self._uids.add(uid)
            else:
                uid, gid = await self._allocate_uid()
            spec = SandboxSpec(sandbox_id, uid, gid, env, limits, egress, public=public,
                               mounts=mounts, block_all=block_all, allow_list=allowed, domains=domains,
                               link_to=link_to, link_names=tuple(link_names))
            if root is not None:
                spec.snapshot, spec.layers = root.snapshot, root.layers
                spec.id_base, spec.disk_gib = root.id_base, root.disk_gib
            running: Running | None = pooled
            slot: Slot | None = None
            try:
                # A pooled sandbox's address (slot) becomes the sandbox's own, for good.
                slot = pooled.slot if pooled is not None else (
                    await self._allocate_slot() if egress == "nat" else None)
                spec.address = slot.address if slot is not None else None
                if pooled is not None:
                    os.rename(pooled.dir.path, target.path)
                    pooled.dir = target
                    # Renaming a bound socket keeps it bound: the daemon keeps listening on it.
                    assert pooled.socket is not None
                    os.rename(pooled.socket, self.socket_path(sandbox_id))
                    pooled.socket = self.socket_path(sandbox_id)
                    if limits != self.default_limits:
                        await asyncio.to_thread(self._apply_limits, pooled, limits)
                else:
                    await asyncio.to_thread(self._prepare_dir, target, spec)
                    running = await self._launch(target, uid, gid, limits, egress,
                                                 self.socket_path(sandbox_id), mounts,
                                                 slot=slot, spec=spec, root=root)
                assert running is not None  # set by either branch
                self.specs[sandbox_id] = spec
                if pooled is not None and slot is not None:
                    await self._claim_with_policy(running, spec, slot)
                else:
                    await self._claim(running, spec)
            except BaseException:
                # A create that failed leaves nothing behind: no process, no cgroup, no
                # socket, no directory that `list` would not show.
                if running is not None:
                    await asyncio.shield(self._kill(running))
                    await asyncio.shield(asyncio.to_thread(running.dir.remove))
                await asyncio.shield(asyncio.to_thread(target.remove))
                sockets.remove(self.socket_path(sandbox_id))
                self.specs.pop(sandbox_id, None)
                self._uids.discard(uid)
                if slot is not None:
                    self._slots.discard(slot.index)
                self._pool_wakeup.set()
                raise
            assert running is not None
            await self._activate(spec, target, running)
            # Refill only now: the next pooled sandbox's imports would compete for CPU
            # with this claim.
            self._pool_wakeup.set()
            return spec

    @staticmethod
    def _apply_limits(running: Running, limits: Limits) -> None:
        try:
            running.group.apply(limits)
        except OSError as exc:
            raise SandboxError(400, f"cannot apply the limits {limits.to_json()} to the sandbox: "
                                    f"{exc.strerror} (a memory limit below what its daemon "
                                    "already uses?)") from None

    async def _activate(self, spec: SandboxSpec, target: SandboxDir, running: Running) -> None:
        """Record a claimed sandbox as started and return once the proxy routes its id."""
        self.running[spec.id] = running
        spec.state = "started"
        target.save(spec)
        self._register(spec)
        await self._until_visible(spec.id)

    def _wanted_root(self, snapshot: str | None, disk_gib: float | None) -> tuple[str, tuple[str, ...], float] | None:
        """(snapshot, its layers, disk GiB) of a new sandbox with its own root; None on the
        host's root (then a snapshot other than the default is refused)."""
        if self.rootfs_mode != "snapshot":
            if snapshot not in (None, DEFAULT_SNAPSHOT):
                raise SandboxError(400, f"snapshot {snapshot!r} needs sandboxes with their own root "
                                        "(start the runtime with RUNTIME_ROOTFS=snapshot)")
            return None
        disk = self.default_disk_gib if disk_gib is None else float(disk_gib)
        if not 0 < disk <= ownroot.MAX_DISK_GIB:
            raise SandboxError(400, f"invalid disk {disk_gib!r} GiB: between 1 and {ownroot.MAX_DISK_GIB}")
        name, layers = self._root_for(snapshot or DEFAULT_SNAPSHOT)
        assert self.snapshots is not None
        try:
            # The toolbox brings its own interpreter; the root needs a shell for this machine.
            check_root([self.snapshots.layer_path(d) for d in reversed(layers)])
        except UnsupportedRoot as exc:
            raise SandboxError(400, f"snapshot {name!r} cannot run the toolbox: {exc}") from None
        return name, layers, disk

    async def _allocate_root(self, snapshot: str, layers: tuple[str, ...], disk_gib: float) -> Root:
        try:
            base = await asyncio.to_thread(sandbox_range, self.root)
        except UidsExhausted as exc:
            raise SandboxError(507, str(exc)) from None
        return Root(snapshot, layers, base, disk_gib)

    def _prepare_dir(self, target: SandboxDir, spec: SandboxSpec) -> None:
        """Idempotent: also brings a sandbox made by an older version up to today's layout."""
        if spec.rooted:
            try:
                target.create_rooted(spec.disk_gib)
                ownroot.wait_disk_free(target.disk)
                ownroot.grow_disk(target.disk, spec.disk_gib)  # a resize recorded while started
            except ownroot.DiskError as exc:
                raise SandboxError(500, str(exc)) from None
        else:
            target.create(spec.uid, spec.gid)

    def _take_pooled(self, wanted: tuple[str, tuple[str, ...], float] | None = None) -> Running | None:
        if self.pool and self.pool[0].root is not None:
            root = self.pool[0].root
            if wanted is None or (root.snapshot, root.layers, root.disk_gib) != wanted:
                default = self._wanted_root(None, None)
                if default is not None and (root.snapshot, root.layers, root.disk_gib) != default:
                    # The default snapshot was rebuilt since the pool was filled: start afresh.
                    while self.pool:
                        self._spawn(self._discard(self.pool.pop()), "discard a pooled sandbox")
                return None
        while self.pool:
            candidate = self.pool.pop(0)
            if candidate.process.returncode is None:
                return candidate
            log.warning("dropping a pooled sandbox that exited (code %s)", candidate.process.returncode)
            self._spawn(self._discard(candidate), "discard a pooled sandbox")
        return None

    async def _discard(self, running: Running) -> None:
        await self._kill(running)
        running.dir.remove()
        if running.socket is not None:
            sockets.remove(running.socket)
        self._uids.discard(running.uid)
        if running.slot is not None:
            self._slots.discard(running.slot.index)
        self._pool_wakeup.set()

    async def start(self, sandbox_id: str) -> SandboxSpec:
        async with self._lock(sandbox_id):
            spec = self.get(sandbox_id)
            if sandbox_id in self.running:
                return spec
            target = SandboxDir(self.sandboxes_dir / sandbox_id)
            if spec.state == "archived":
                await self._restore(spec, target)
            await asyncio.to_thread(self._prepare_dir, target, spec)
            slot = self._slot_of(spec)
            if spec.egress == "nat" and slot is None:
                slot = await self._readdress(spec, target)
            root = (Root(spec.snapshot or DEFAULT_SNAPSHOT, spec.layers, spec.id_base, spec.disk_gib)
                    if spec.id_base is not None else None)
            running = await self._launch(target, spec.uid, spec.gid, spec.limits, spec.egress,
                                         self.socket_path(sandbox_id), spec.mounts, slot=slot, spec=spec,
                                         root=root)
            try:
                await self._claim(running, spec)
            except BaseException:
                await self._kill(running)
                raise
            await self._activate(spec, target, running)
            return spec

    async def stop(self, sandbox_id: str) -> SandboxSpec:
        async with self._lock(sandbox_id):
            spec = self.get(sandbox_id)
            running = self.running.pop(sandbox_id, None)
            if self.registry is not None:
                self.registry.remove(sandbox_id)
            if running is not None:
                await self._kill(running)
            sockets.remove(self.socket_path(sandbox_id))
            if running is None and spec.state == "archived":
                return spec  # stays archived: its files are in the archive only
            spec.state = "stopped"
            SandboxDir(self.sandboxes_dir / sandbox_id).save(spec)
            return spec

    async def delete(self, sandbox_id: str) -> None:
        await self.stop(sandbox_id)
        async with self._lock(sandbox_id):
            spec = self.specs.pop(sandbox_id, None)
            if spec is not None:
                self._uids.discard(spec.uid)  # bookkeeping only: a uid is never handed out again
                slot = self._slot_of(spec)
                if slot is not None:
                    self._slots.discard(slot.index)  # the address is free again
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._archive_path(sandbox_id))
            target = SandboxDir(self.sandboxes_dir / sandbox_id)
            if spec is not None and spec.rooted:
                # Its disk is free once the kernel has torn its mount namespaces down, i.e.
                # once its last process is gone: then nothing of it is left but files.
                with contextlib.suppress(ownroot.DiskError):
                    await asyncio.to_thread(ownroot.wait_disk_free, target.disk)
            await asyncio.to_thread(target.remove)
        self._locks.pop(sandbox_id, None)
        await self._unlink_followers(sandbox_id)

    async def _unlink_followers(self, owner_id: str) -> None:
        """Followers of a deleted owner lose the link and its names at once (the control
        plane deletes them too; a bare runtime keeps them)."""
        for spec in [s for s in self.specs.values() if s.link_to == owner_id]:
            async with self._lock(spec.id):
                hosts = self._hosts(spec)  # the owner is gone: its line is not in it
                spec.link_to, spec.link_names = None, ()
                target = SandboxDir(self.sandboxes_dir / spec.id)
                target.save(spec)
                if hosts is not None:  # rewritten in place: the bind mount inside follows
                    await asyncio.to_thread((target.path / "etc" / "hosts").write_text, hosts)
                running = self.running.get(spec.id)
                if running is not None and running.slot is not None and self.net is not None:
                    try:
                        await asyncio.to_thread(self.net.unlink, running.slot)
                    except NetworkError as exc:
                        log.warning("could not remove %s's link: %s", spec.id, exc.message)

    # ---- archive, resize, status -----------------------------------------------------

    def _archive_path(self, sandbox_id: str) -> Path:
        return self.archives_dir / f"{sandbox_id}{archive.SUFFIX}"

    async def archive(self, sandbox_id: str) -> SandboxSpec:
        """Pack a stopped sandbox's files into one tar + zstd archive and free their disk;
        `start` restores them. See runtime.archive for the order that makes it crash-safe."""
        async with self._lock(sandbox_id):
            spec = self.get(sandbox_id)
            if spec.state == "archived":
                return spec
            if sandbox_id in self.running:
                raise SandboxError(409, f"sandbox {sandbox_id!r} is started: stop it before archiving")
            target = SandboxDir(self.sandboxes_dir / sandbox_id)
            began = time.monotonic()
            try:
                size = await archive.pack(target.path, self._archive_path(sandbox_id))
            except archive.ArchiveError as exc:
                raise SandboxError(500, f"could not archive sandbox {sandbox_id!r}: {exc}") from None
            spec.state = "archived"
            await asyncio.to_thread(self._save_durably, target, spec)
            await asyncio.to_thread(archive.drop_unpacked, target.path)
            log.info("archived %s: %d bytes in %.2f s", sandbox_id, size, time.monotonic() - began)
            return spec

    async def _restore(self, spec: SandboxSpec, target: SandboxDir) -> None:
        path = self._archive_path(spec.id)
        if not path.exists():
            raise SandboxError(500, f"sandbox {spec.id!r} is archived but its archive {path} is missing")
        try:
            await archive.unpack(path, target.path)
        except archive.ArchiveError as exc:
            raise SandboxError(500, f"could not restore sandbox {spec.id!r}: {exc}") from None
        spec.state = "stopped"
        await asyncio.to_thread(self._save_durably, target, spec)
        os.unlink(path)

    @staticmethod
    def _save_durably(target: SandboxDir, spec: SandboxSpec) -> None:
        target.save(spec)
        archive.fsync_path(target.meta)
        archive.fsync_path(target.path, directory=True)

    async def resize(self, sandbox_id: str, limits: Limits, disk_gib: float | None = None) -> SandboxSpec:
        """Apply new limits to a started sandbox's cgroup at once, or record them for the
        next start; a memory limit below what the sandbox uses now is refused. A sandbox
        with its own root gets a larger disk (it only grows) at its next start."""
        async with self._lock(sandbox_id):
            spec = self.get(sandbox_id)
            if spec.rooted and disk_gib is not None and disk_gib != spec.disk_gib:
                if disk_gib < spec.disk_gib:
                    raise SandboxError(400, f"the disk of sandbox {sandbox_id!r} can only grow "
                                            f"(now {spec.disk_gib:g} GiB)")
                if not disk_gib <= ownroot.MAX_DISK_GIB:
                    raise SandboxError(400, f"invalid disk {disk_gib:g} GiB: at most {ownroot.MAX_DISK_GIB}")
                spec.disk_gib = disk_gib
            running = self.running.get(sandbox_id)
            if running is not None:
                used = (await asyncio.to_thread(running.group.stats)).get("memory_bytes")
                if used is not None and limits.memory_bytes < used:
                    raise SandboxError(409, f"cannot lower memory of sandbox {sandbox_id!r} to "
                                            f"{limits.memory_mib} MiB: it uses {used / 2**20:.0f} MiB now")
                try:
                    await asyncio.to_thread(running.group.apply, limits)
                except OSError as exc:
                    # The kernel refuses (e.g. EBUSY) when usage grew past it meanwhile; put
                    # back what held before, so the group is never left half-changed.
                    with contextlib.suppress(OSError):
                        await asyncio.to_thread(running.group.apply, spec.limits)
                    raise SandboxError(409, f"cannot resize sandbox {sandbox_id!r}: {exc}") from None
            spec.limits = limits
            SandboxDir(self.sandboxes_dir / sandbox_id).save(spec)
            return spec

    def status(self) -> dict[str, str]:
        """Every sandbox on disk and its state (`started`, `stopped` or `archived`), for
        the control plane to reconcile its records with."""
        out: dict[str, str] = {}
        for sandbox_id, spec in self.specs.items():
            running = self.running.get(sandbox_id)
            if running is not None and running.process.returncode is None:
                out[sandbox_id] = "started"
            else:
                out[sandbox_id] = "archived" if spec.state == "archived" else "stopped"
        return out

    async def set_network(self, sandbox_id: str, block_all: bool | None = None,
                          allow_list: str | Sequence[str] | None = None,
                          domain_allow_list: str | Sequence[str] | None = None) -> SandboxSpec:
        """Daytona's network settings: recorded, and applied at once to a started sandbox
        (live: established connections are cut too). `None` keeps what is set."""
        async with self._lock(sandbox_id):
            spec = self.get(sandbox_id)
            try:
                allowed = spec.allow_list if allow_list is None else parse_allow_list(allow_list)
            except NetworkError as exc:
                raise SandboxError(exc.status, exc.message) from None
            domains = spec.domains if domain_allow_list is None else self._domain_list(spec.egress, domain_allow_list)
            new_block = spec.block_all if block_all is None else block_all
            if spec.egress == "none" and (new_block is False or allowed):
                raise SandboxError(400, f"sandbox {sandbox_id!r} has no network of its own (loopback only): "
                                        "network settings cannot give it egress")
            if spec.egress == "host" and (new_block or allowed):
                raise SandboxError(400, f"sandbox {sandbox_id!r} shares the host's network (--egress host): "
                                        "it cannot be restricted")
            spec.block_all, spec.allow_list, spec.domains = new_block, allowed, domains
            running = self.running.get(sandbox_id)
            if running is not None and running.slot is not None:
                await self._apply_policy(running.slot, spec)
            SandboxDir(self.sandboxes_dir / sandbox_id).save(spec)
            return spec

    async def _apply_policy(self, slot: Slot, spec: SandboxSpec) -> None:
        assert self.net is not None
        try:
            # To its end even when cancelled: nothing may change the slot's rules afterwards.
            await finish_in_thread(self.net.set_policy, slot, spec.block_all, spec.allow_list, spec.domains)
        except NetworkError as exc:
            raise SandboxError(exc.status, f"cannot apply the network policy: {exc.message}") from None

    def _domain_list(self, egress: str, value: str | Sequence[str] | None) -> tuple[str, ...]:
        try:
            domains = parse_domain_list(value)
        except DnsError as exc:
            raise SandboxError(exc.status, exc.message) from None
        if domains and (egress != "nat" or self.net is None):
            raise SandboxError(400, "domainAllowList needs sandboxes with their own network (a runtime "
                                    "running as root with iproute2 and nftables)")
        why = Resolvers.available() if domains else None
        if why is not None:
            raise SandboxError(400, f"domainAllowList needs {why}")
        return domains

    def _check_link(self, egress: str, owner_id: str) -> None:
        owner = self.get(owner_id)
        if egress != "nat" or owner.egress != "nat" or owner.address is None:
            raise SandboxError(400, "linked sandboxes need networks of their own (a runtime running as root "
                                    "with iproute2 and nftables)")
        if owner.link_to is not None:
            raise SandboxError(400, f"sandbox {owner_id!r} is itself linked to another sandbox: "
                                    "link to its owner instead")

    def _hosts(self, spec: SandboxSpec) -> str | None:
        """A linked follower's /etc/hosts: its owner's address under the owner's names."""
        if spec.link_to is None:
            return None
        hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        owner = self.specs.get(spec.link_to)
        if owner is None or owner.address is None:
            return hosts  # the owner is gone: its names go too (its address may be reused)
        return hosts + f"{owner.address}\t{' '.join(dict.fromkeys((*spec.link_names, owner.id)))}\n"

    async def _network_up(self, target: SandboxDir, slot: Slot, spec: SandboxSpec | None) -> None:
        """The slot's netns, veth and policy (a pooled slot: block all until claimed), and
        the sandbox's resolv.conf naming its gateway."""
        assert self.net is not None
        net = self.net
        block_all, allowed = (True, ()) if spec is None else (spec.block_all, spec.allow_list)
        domains = () if spec is None else spec.domains
        hosts = None if spec is None else self._hosts(spec)
        owner = self.specs.get(spec.link_to) if spec is not None and spec.link_to else None
        link_to = owner.address if owner is not None else None
        try:
            await asyncio.to_thread(net.setup, slot, block_all, allowed, domains, link_to)
        except NetworkError as exc:
            raise SandboxError(exc.status, f"cannot set up the sandbox's network: {exc.message}") from None
        await asyncio.to_thread((target.path / "etc" / "resolv.conf").write_text, net.resolv_conf(slot))
        if hosts is not None:
            await asyncio.to_thread((target.path / "etc" / "hosts").write_text, hosts)

    async def _network_down(self, slot: Slot) -> None:
        if self.net is not None:
            await asyncio.to_thread(self.net.teardown, slot)

    # ---- processes ------------------------------------------------------------------

    async def _allocate_uid(self) -> tuple[int, int]:
        if self.uid_range is None:
            return os.getuid(), os.getgid()
        try:
            uid = await asyncio.to_thread(self.uid_range.allocate)
        except UidsExhausted as exc:
            raise SandboxError(507, str(exc)) from None
        self._uids.add(uid)
        return uid, uid

    def socket_path(self, sandbox_id: str) -> Path:
        return sockets.socket_path(self.root, sandbox_id)

    def _check_mounts(self, mounts: Sequence[Mount]) -> tuple[Mount, ...]:
        """Validate targets and make sure every source opens safely now, so a bad mount is
        a 400 before anything is created."""
        checked: list[Mount] = []
        for mount in mounts:
            if not isinstance(mount, Mount):
                raise SandboxError(400, f"mounts must be Mount objects, got {type(mount).__name__}")
            try:
                target = validate_target(mount.target, reserved=(HOME_INSIDE, "/tmp"))
            except MountError as exc:
                raise SandboxError(400, str(exc)) from None
            if any(m.target == target for m in checked):
                raise SandboxError(400, f"two mounts at {target!r}")
            if not self._mountable(target):
                raise SandboxError(400, f"mount path {target!r} does not exist in the sandbox's "
                                        "read-only root and cannot be created there: mount under "
                                        f"{HOME_INSIDE} or /tmp, or at a directory that exists")
            checked.append(Mount(mount.source, target, mount.read_only))
        self._open_mounts(checked).close()
        return tuple(checked)

    def _mountable(self, target: str) -> bool:
        """bwrap creates a missing mount point only inside what is writable while it sets
        up (the sandbox's binds and tmpfs); the host root is bound read-only."""
        if self.rootfs_mode == "snapshot":
            return True  # its own root is writable: the launcher makes the mount point
        writable = (HOME_INSIDE, "/tmp", "/home", "/run", "/var/tmp", str(self.root))
        return any(target.startswith(w + "/") for w in writable) or os.path.isdir(target)

    @staticmethod
    def _open_mounts(mounts: Sequence[Mount]) -> OpenedMounts:
        try:
            return open_mounts(mounts)
        except MountError as exc:
            raise SandboxError(400, str(exc)) from None

    async def _launch(self, target: SandboxDir, uid: int, gid: int, limits: Limits,
                      egress: str, socket_path: Path, mounts: Sequence[Mount] = (), *,
                      slot: Slot | None = None, spec: SandboxSpec | None = None,
                      root: Root | None = None) -> Running:
        """Start bwrap around the pre-importing entry; returns once it reports `pooled`.

        The daemon's socket is bound here, at `socket_path` in the runtime's private
        sockets dir, and inherited by the daemon as a descriptor (runtime/sockets.py).

        Whatever happens (errors, cancellation when the runtime stops), a sandbox that did
        not come up leaves no cgroup and no process behind."""
        opened = self._open_mounts(mounts)
        try:
            if slot is not None:
                await self._network_up(target, slot, spec)
            try:
                running = await self._launch_with(target, uid, gid, limits, egress, socket_path, opened,
                                                  slot, root)
            except BaseException:
                if slot is not None:
                    await asyncio.shield(self._network_down(slot))
                raise
            running.slot = slot
            running.root = root
            return running
        finally:
            opened.close()  # bwrap holds its own copies once started

    async def _launch_with(self, target: SandboxDir, uid: int, gid: int, limits: Limits,
                           egress: str, socket_path: Path, opened: OpenedMounts,
                           slot: Slot | None = None, root: Root | None = None) -> Running:
        name = f"{self._group_prefix}{os.urandom(5).hex()}"
        try:
            group = await finish_in_thread(self.backend.create, name, limits, undo=cgroups.Group.remove)
        except OSError as exc:
            raise SandboxError(500, f"cannot set up the sandbox's cgroup: {exc}") from None
        process: asyncio.subprocess.Process | None = None
        try:
            try:
                listener = sockets.bind_unlistened(socket_path)
            except OSError as exc:
                raise SandboxError(500, f"cannot bind the daemon's socket {socket_path}: {exc} (a Unix "
                                        "socket path has at most 107 bytes: use a shorter state dir)") from None
            syscall_filter = await asyncio.to_thread(seccomp.filter_fd)
            try:
                argv = self.backend.launch_prefix(group, limits)
                if slot is not None:
                    # bwrap (and so the whole sandbox) lives in the slot's network namespace.
                    argv += ["nsenter", f"--net={slot.netns_path}", "--"]
                try:
                    if root is not None:
                        argv += await asyncio.to_thread(self._launcher_argv, target, root, egress,
                                                        listener.fileno(), syscall_filter, opened)
                    else:
                        # A thread: the command line lists the host's /etc (sandbox.etc_mounts).
                        argv += await asyncio.to_thread(
                            bwrap_argv, target, state_root=self.root, egress=egress, python=self.python,
                            terminal_port=self.terminal_port,
                            run_as=(uid, gid) if os.geteuid() == 0 else None,
                            listen_fd=listener.fileno(), seccomp_fd=syscall_filter,
                            mounts=opened.binds, groups=opened.groups)
                except RuntimeError as exc:  # runtime/codemount.py: an interpreter it cannot bring in
                    raise SandboxError(500, f"cannot start the sandbox's daemon: {exc}") from None
                env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                       **self.backend.launch_env(group)}
                with open(open_private_append(target.log), "ab") as logfile:  # noqa: ASYNC230 - a local file, opened once
                    process = await asyncio.create_subprocess_exec(
                        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                        stderr=logfile, env=env, start_new_session=True,
                        pass_fds=(listener.fileno(), syscall_filter, *opened.fds),
                    )
            finally:
                listener.close()  # the daemon holds its own copy
                os.close(syscall_filter)
            running = Running(process, group, target, uid, gid, socket=socket_path)
            await self._expect(running, b"pooled")
        except BaseException:
            sockets.remove(socket_path)
            if process is not None:
                await asyncio.shield(self._kill(Running(process, group, target, uid, gid)))
            else:
                await asyncio.shield(asyncio.to_thread(group.remove))
            raise
        return running

    def _launcher_argv(self, target: SandboxDir, root: Root, egress: str, listen_fd: int,
                       seccomp_fd: int, opened: OpenedMounts) -> builtins.list[str]:
        assert self.snapshots is not None
        resolv = target.path / "etc" / "resolv.conf"  # written by _network_up (egress "nat")
        hosts = target.path / "etc" / "hosts"  # a linked follower's (_network_up)
        return ownroot.launcher_argv(
            sandbox_dir=target.path, layers=[self.snapshots.layer_path(d) for d in root.layers],
            id_base=root.id_base, egress=egress, listen_fd=listen_fd, seccomp_fd=seccomp_fd,
            python=self.python, terminal_port=0 if egress == "host" else self.terminal_port,
            volumes=opened.binds, volume_gids=opened.groups, resolv_conf=resolv.read_text() if resolv.exists() else None,
            hosts=hosts.read_text() if hosts.exists() else None)

    async def _expect(self, running: Running, marker: bytes) -> None:
        assert running.process.stdout is not None
        try:
            async with asyncio.timeout(self.start_timeout):
                while True:
                    line = await running.process.stdout.readline()
                    if not line:
                        code = await running.process.wait()
                        why = _last_line(running.dir.log)
                        if code in (137, -9) and why == "(empty log)":
                            why = "killed, likely by its memory limit (--memory); try a larger one"
                        raise SandboxError(500, f"sandbox exited during start-up (exit {code}): {why}")
                    if line.startswith(marker):
                        return
        except TimeoutError:
            raise SandboxError(504, f"sandbox did not start within {self.start_timeout:.0f} s; "
                                    f"see {running.dir.log}") from None

    async def _claim(self, running: Running, spec: SandboxSpec) -> None:
        assert running.process.stdin is not None
        claim = {"id": spec.id, "env": spec.env}
        running.process.stdin.write(json.dumps(claim).encode() + b"\n")
        await running.process.stdin.drain()
        running.process.stdin.close()
        await self._expect(running, READY_LINE)
        running.started_at = time.time()
        running.pump = self._tasks.spawn(self._pump(running, spec.id), name=f"pump {spec.id}'s output")
        self._protect_daemon(running)

    async def _claim_with_policy(self, running: Running, spec: SandboxSpec, slot: Slot) -> None:
        """A pooled slot blocks all egress until claimed, so its own policy (one nft call,
        ~10 ms) is applied while the daemon takes its claim: both are done when this
        returns, or, when either failed, the nft call has returned (the caller then tears
        the slot down) and the failure is raised as it is."""
        try:
            async with asyncio.TaskGroup() as both:
                both.create_task(self._apply_policy(slot, spec), name=f"network policy of {spec.id}")
                await self._claim(running, spec)
        except BaseExceptionGroup as group:
            raise sole_exception(group) from None

    async def _pump(self, running: Running, sandbox_id: str) -> None:
        """Keep draining the daemon's stdout into its log (it must never block on it); when
        the sandbox dies on its own, mark it stopped and take it out of the registry."""
        assert running.process.stdout is not None
        # A local file: appends of at most 64 KiB do not stall the loop for long.
        with open(open_private_append(running.dir.log), "ab") as logfile:  # noqa: ASYNC230
            while chunk := await running.process.stdout.read(65536):
                logfile.write(chunk)
                logfile.flush()
        await running.process.wait()
        if self.running.get(sandbox_id) is running and not self._closed:
            log.warning("sandbox %s exited on its own (code %s)", sandbox_id, running.process.returncode)
            self._spawn(self.stop(sandbox_id), f"stop {sandbox_id}, which exited")

    def _protect_daemon(self, running: Running) -> None:
        """Make the OOM killer pick a memory hog before the sandbox's own daemon.

        Lowering oom_score_adj below 0 needs CAP_SYS_RESOURCE even as root; containers
        often drop it (this CI machine does), and then the daemon stays at 0: said once,
        loudly, and visible as `daemon_oom_score_adj` in `runtime get`."""
        for pid in running.group.pids():
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue  # exited meanwhile
            # The daemon itself, not the bwrap processes whose arguments name it too.
            if not is_daemon(argv):
                continue
            running.daemon_pid = pid
            if os.geteuid() != 0:
                return
            try:
                Path(f"/proc/{pid}/oom_score_adj").write_text(str(DAEMON_OOM_SCORE_ADJ))
            except OSError as exc:
                level = logging.DEBUG if self._oom_warned else logging.WARNING
                self._oom_warned = True
                log.log(level, "cannot set the sandbox daemon's oom_score_adj to %d (%s): below 0 "
                        "needs CAP_SYS_RESOURCE, which this runtime lacks (a container that drops "
                        "it?); the OOM killer may pick the daemon before a memory hog",
                        DAEMON_OOM_SCORE_ADJ, exc)
            return

    async def _kill(self, running: Running) -> None:
        # Killing bwrap kills the sandbox's pid 1 (--die-with-parent), and with it the
        # whole pid namespace; the cgroup sweep catches anything that escaped.
        try:
            os.killpg(running.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        await running.process.wait()
        if running.pump is not None:  # never this task: a pump spawns the stop of its sandbox
            await running.pump.wait()
        await asyncio.to_thread(running.group.remove)
        if running.slot is not None:
            await self._network_down(running.slot)

    async def _until_visible(self, sandbox_id: str) -> None:
        if self.visible is None:
            return
        try:
            await self.visible(sandbox_id)
        except Exception as exc:  # the sandbox is up either way; the proxy catches up
            log.warning("proxy did not confirm %s: %s", sandbox_id, exc)

    def _register(self, spec: SandboxSpec) -> None:
        if self.registry is None:
            return
        socket = self.socket_path(spec.id)
        self.registry.set(spec.id, f"unix:{socket}", spec.token, spec.public, spec.uid)

    # ---- background loops -----------------------------------------------------------

    async def _pool_loop(self) -> None:
        while not self._closed:
            self._pool_wakeup.clear()
            while len(self.pool) < self.pool_size and not self._closed:
                try:
                    self.pool.append(await self._new_pooled())
                except Exception as exc:  # keep serving cold starts; retry later
                    log.warning("could not pre-start a pooled sandbox: %s", exc)
                    await asyncio.sleep(5)
            await self._pool_wakeup.wait()

    async def _new_pooled(self) -> Running:
        root: Root | None = None
        wanted = self._wanted_root(None, None)
        if wanted is not None:
            root = await self._allocate_root(*wanted)
            uid = gid = root.id_base + ownroot.USER_ID_INSIDE
            self._uids.add(uid)
        else:
            uid, gid = await self._allocate_uid()
        name = f"pool-{os.urandom(5).hex()}"
        target = SandboxDir(self.pool_dir / name)
        slot = None
        try:
            if root is not None:
                await asyncio.to_thread(target.create_rooted, root.disk_gib)
            else:
                await asyncio.to_thread(target.create, uid, gid)
            slot = await self._allocate_slot() if self.default_egress == "nat" else None
            # Blocked until claimed: the claim applies the sandbox's own policy.
            return await self._launch(target, uid, gid, self.default_limits, self.default_egress,
                                      sockets.pooled_socket_path(self.root, name), slot=slot, root=root)
        except BaseException:
            target.remove()
            self._uids.discard(uid)
            if slot is not None:
                self._slots.discard(slot.index)
            raise

    def resize_pool(self, size: int) -> None:
        """Keep `size` sandboxes warm from now on (the control plane's warm pools); pooled
        sandboxes beyond it are stopped and removed."""
        if size < 0:
            raise SandboxError(400, f"pool size must be 0 or more, got {size}")
        self.pool_size = size
        while len(self.pool) > size:
            self._spawn(self._discard(self.pool.pop()), "discard a pooled sandbox")
        self._pool_wakeup.set()

    async def set_env(self, sandbox_id: str, env: dict[str, str]) -> SandboxSpec:
        """Replace a sandbox's environment; it applies at the sandbox's next start."""
        async with self._lock(sandbox_id):
            spec = self.get(sandbox_id)
            spec.env = {str(k): str(v) for k, v in env.items()}
            await asyncio.to_thread(SandboxDir(self.sandboxes_dir / sandbox_id).save, spec)
            return spec

    async def wait_pool_ready(self, timeout: float = 60.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.pool) < self.pool_size:
                await asyncio.sleep(0.02)

    async def idle_check(self) -> builtins.list[str]:  # `list` here is Runtime.list
        """Stop every started sandbox idle for longer than `idle_timeout`; returns their ids."""
        if self.idle_timeout <= 0:
            return []
        seen: dict[str, float] = {}
        if self.activity is not None:
            try:
                seen = await self.activity()
            except Exception as exc:
                log.warning("could not read last activity from the proxy: %s", exc)
                return []
        now = time.time()
        stopped = []
        for sandbox_id, running in list(self.running.items()):
            last = max(running.started_at, seen.get(sandbox_id, 0.0))
            if now - last >= self.idle_timeout:
                log.info("auto-stopping %s: idle for %.0f s", sandbox_id, now - last)
                await self.stop(sandbox_id)
                stopped.append(sandbox_id)
        return stopped

    async def _idle_loop(self) -> None:
        interval = max(0.2, min(30.0, self.idle_timeout / 4))
        while not self._closed:
            await asyncio.sleep(interval)
            await self.idle_check()
