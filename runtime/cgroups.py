"""Per-sandbox resource limits: cgroup v2, cgroup v1, or rlimits as a last resort.

`detect()` picks the strongest mechanism this machine allows:

- ``cgroup2``: a unified hierarchy with the cpu, memory and pids controllers, writable
  (we run as root, or were delegated a subtree): one sub-cgroup per sandbox.
- ``cgroup1``: the legacy per-controller hierarchies (`/sys/fs/cgroup/{cpu,memory,pids}`),
  as on hybrid hosts and some micro-VMs: one directory per sandbox in each.
- ``rlimit``: no writable cgroups. RLIMIT_NPROC (counted per uid, and every sandbox has
  its own uid when we run as root) and RLIMIT_AS per process. Weaker: no CPU cap, and
  memory is capped per process, not per sandbox.

A backend hands out `Group`s. A process joins a group by writing its own pid into the
group's `procs_files` before it execs the sandbox (see `launch_prefix`), so nothing it
forks can escape the limits.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from runtime.limits import Limits

CGROUP_ROOT = Path("/sys/fs/cgroup")
PARENT_NAME = "sandbox-toolbox"
CPU_PERIOD_US = 100_000


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


@dataclass
class Group:
    """One sandbox's share of the machine."""

    backend: "Backend"
    name: str
    dirs: list[Path] = field(default_factory=list)

    @property
    def procs_files(self) -> list[Path]:
        return [d / "cgroup.procs" for d in self.dirs]

    def apply(self, limits: Limits) -> None:
        self.backend.apply(self, limits)

    def pids(self) -> set[int]:
        found: set[int] = set()
        for procs in self.procs_files:
            for line in _read(procs).split():
                found.add(int(line))
        return found

    def kill(self) -> None:
        """SIGKILL everything still in the group (stragglers outside the pid namespace)."""
        for _ in range(20):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)

    def remove(self) -> None:
        self.kill()
        for d in self.dirs:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        break
                    time.sleep(0.02)

    def stats(self) -> dict[str, int]:
        return self.backend.stats(self)


class Backend:
    name = "none"
    description = ""

    def create(self, name: str, limits: Limits) -> Group:
        return Group(self, name)

    def apply(self, group: Group, limits: Limits) -> None:
        pass

    def stats(self, group: Group) -> dict[str, int]:
        return {}

    def parents_dirs(self) -> list[Path]:
        return []

    def sweep(self, prefix: str) -> None:
        """Remove leftover groups whose name starts with `prefix`, killing what is in them."""
        names = {d.name for p in self.parents_dirs() if p.is_dir()
                 for d in p.iterdir() if d.is_dir() and d.name.startswith(prefix)}
        for name in names:
            Group(self, name, [p / name for p in self.parents_dirs() if (p / name).is_dir()]).remove()

    def launch_prefix(self, group: Group, limits: Limits) -> list[str]:
        """Argv prefix that puts the launched process into `group` before it execs."""
        if not group.dirs:
            return []
        script = 'for f in $RUNTIME_CGROUP_PROCS; do echo $$ > "$f" || exit 97; done; exec "$@"'
        return ["/bin/sh", "-c", script, "runtime-launch"]

    def launch_env(self, group: Group) -> dict[str, str]:
        return {"RUNTIME_CGROUP_PROCS": " ".join(str(p) for p in group.procs_files)}


def _probe(parents: list[Path]) -> None:
    """Raise OSError unless we may create (and remove) groups under every parent: the
    parents may exist already, made by root, while we are not."""
    for parent in parents:
        probe = parent / f"probe-{os.getpid()}"
        probe.mkdir(exist_ok=True)
        probe.rmdir()


class CgroupV2(Backend):
    name = "cgroup2"

    def __init__(self, root: Path) -> None:
        self.parent = root / PARENT_NAME
        self.description = f"cgroup v2 at {self.parent} (cpu.max, memory.max, pids.max)"

    def parents_dirs(self) -> list[Path]:
        return [self.parent]

    def setup(self) -> None:
        self.parent.mkdir(exist_ok=True)
        controllers = "+cpu +memory +pids"
        _write(self.parent.parent / "cgroup.subtree_control", controllers)
        _write(self.parent / "cgroup.subtree_control", controllers)
        _probe([self.parent])

    def create(self, name: str, limits: Limits) -> Group:
        d = self.parent / name
        d.mkdir(exist_ok=True)
        group = Group(self, name, [d])
        self.apply(group, limits)
        return group

    def apply(self, group: Group, limits: Limits) -> None:
        d = group.dirs[0]
        _write(d / "cpu.max", f"{int(limits.cpus * CPU_PERIOD_US)} {CPU_PERIOD_US}")
        _write(d / "memory.max", str(limits.memory_bytes))
        if (d / "memory.swap.max").exists():
            _write(d / "memory.swap.max", "0")
        _write(d / "pids.max", str(limits.pids))

    def stats(self, group: Group) -> dict[str, int]:
        d = group.dirs[0]
        out = {}
        for key, fname in (("memory_bytes", "memory.current"), ("pids", "pids.current")):
            value = _read(d / fname)
            if value.isdigit():
                out[key] = int(value)
        return out


class CgroupV1(Backend):
    name = "cgroup1"
    CONTROLLERS = ("cpu", "memory", "pids")

    def __init__(self, root: Path) -> None:
        self.parents = [root / c / PARENT_NAME for c in self.CONTROLLERS]
        self.description = (
            f"cgroup v1 under {root}/{{cpu,memory,pids}}/{PARENT_NAME} "
            "(cpu.cfs_quota_us, memory.limit_in_bytes, pids.max)"
        )

    def parents_dirs(self) -> list[Path]:
        return list(self.parents)

    def setup(self) -> None:
        for p in self.parents:
            p.mkdir(exist_ok=True)
        # Charge children to the parent too, so its usage is the sum of the sandboxes'.
        use_hierarchy = self.parents[1] / "memory.use_hierarchy"
        if _read(use_hierarchy) == "0":
            try:
                _write(use_hierarchy, "1")
            except OSError:
                pass
        _probe(self.parents)

    def create(self, name: str, limits: Limits) -> Group:
        dirs = []
        for p in self.parents:
            d = p / name
            d.mkdir(exist_ok=True)
            dirs.append(d)
        group = Group(self, name, dirs)
        self.apply(group, limits)
        return group

    def apply(self, group: Group, limits: Limits) -> None:
        cpu, memory, pids = group.dirs
        _write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
        _write(cpu / "cpu.cfs_quota_us", str(int(limits.cpus * CPU_PERIOD_US)))
        memsw = memory / "memory.memsw.limit_in_bytes"
        # memsw must stay >= limit: lower it after, raise it before, the memory limit.
        current = _read(memory / "memory.limit_in_bytes")
        raising = current.isdigit() and int(current) < limits.memory_bytes
        if memsw.exists() and raising:
            _write(memsw, str(limits.memory_bytes))
        _write(memory / "memory.limit_in_bytes", str(limits.memory_bytes))
        if memsw.exists() and not raising:
            _write(memsw, str(limits.memory_bytes))
        _write(pids / "pids.max", str(limits.pids))

    def stats(self, group: Group) -> dict[str, int]:
        _, memory, pids = group.dirs
        out = {}
        for key, path in (("memory_bytes", memory / "memory.usage_in_bytes"),
                          ("pids", pids / "pids.current")):
            value = _read(path)
            if value.isdigit():
                out[key] = int(value)
        return out


class Rlimits(Backend):
    """No writable cgroups: per-uid process count and per-process address space."""

    name = "rlimit"

    def __init__(self, own_uids: bool | None = None) -> None:
        # RLIMIT_NPROC counts every process of the real uid: a per-sandbox limit only when
        # each sandbox has a uid of its own (we run as root); otherwise it would count the
        # user's whole session, so it is left off.
        self.own_uids = os.geteuid() == 0 if own_uids is None else own_uids
        nproc = "RLIMIT_NPROC per sandbox uid, " if self.own_uids else ""
        self.description = (f"rlimits ({nproc}RLIMIT_AS per process); no CPU cap"
                            f"{'' if self.own_uids else ', no process cap'}: "
                            "no writable cgroup hierarchy on this machine")

    def launch_prefix(self, group: Group, limits: Limits) -> list[str]:
        prlimit = shutil.which("prlimit")
        if prlimit is None:
            return []
        # Address space, not resident memory: Python reserves far more than it touches,
        # so allow headroom over the memory limit.
        nproc = [f"--nproc={limits.pids}"] if self.own_uids else []
        return [prlimit, *nproc, f"--as={limits.memory_bytes * 4}", "--"]

    def launch_env(self, group: Group) -> dict[str, str]:
        return {}


def detect(root: Path = CGROUP_ROOT) -> Backend:
    """The strongest limit mechanism this process can use."""
    if (root / "cgroup.controllers").exists():
        available = set(_read(root / "cgroup.controllers").split())
        if {"cpu", "memory", "pids"} <= available:
            backend = CgroupV2(root)
            try:
                backend.setup()
                return backend
            except OSError:
                pass
    if all((root / c / "cgroup.procs").exists() for c in CgroupV1.CONTROLLERS):
        backend1 = CgroupV1(root)
        try:
            backend1.setup()
            return backend1
        except OSError:
            pass
    return Rlimits()
