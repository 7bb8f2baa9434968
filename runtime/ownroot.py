"""The host side of a sandbox with its own root: its disk image and the launcher's command.

A sandbox of a snapshot (runtime/snapshots.py) runs under `runtime.rootlauncher` instead of
bwrap; see that module for why and how. Here: the per-sandbox disk (a sparse ext4 image,
its size the quota) and the launcher's configuration.

    STATE/sandboxes/<id>/disk.img   sparse ext4, `disk` GiB; upper/ and work/ of the overlay
    STATE/sandboxes/<id>/mnt/       the launcher's staging mount point (in its own mount
                                    namespace only; empty on the host)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from runtime.codemount import CODE_ROOT, REPO_ROOT, code_mount

# Inside every sandbox: root is id 0 of its range, the sandbox's user (and daemon) 1000.
IDS_PER_SANDBOX = 65_536
USER_ID_INSIDE = 1000
HOME_INSIDE = "/home/daytona"
# Volumes' shared gids appear inside as these groups, one per volume (runtime/rootlauncher.py).
VOLUME_GROUPS_INSIDE = 60_000
DISK_IMAGE = "disk.img"
STAGING = "mnt"
GIB = 2**30
MAX_DISK_GIB = 1024


class DiskError(Exception):
    pass


def make_disk(path: Path, gib: float) -> None:
    """A sparse ext4 image of `gib` GiB (it takes only what is written). No reserved blocks:
    the quota is what the sandbox gets. Written to a temporary name, renamed when complete."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.truncate(int(gib * GIB))
    try:
        # lazy_itable_init: the kernel zeroes inode tables later, on first mount, instead of
        # mkfs writing them now; no journal discard pass over an empty sparse file.
        result = subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
             "-O", "^has_journal" if gib < 0.1 else "has_journal", str(tmp)],
            capture_output=True, text=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        if result.returncode != 0:
            raise DiskError(f"mkfs.ext4 failed: {result.stderr.strip()}")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def grow_disk(path: Path, gib: float) -> None:
    """Raise the quota of a stopped sandbox: extend the image and its file system."""
    if path.stat().st_size >= int(gib * GIB):
        return
    with open(path, "r+b") as f:
        f.truncate(int(gib * GIB))
    subprocess.run(["e2fsck", "-f", "-p", str(path)], capture_output=True, check=False)
    result = subprocess.run(["resize2fs", str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        raise DiskError(f"resize2fs failed: {result.stderr.strip()}")


def disk_in_use(path: Path) -> bool:
    """Whether a loop device still holds `path` (a stopped sandbox's mount namespace is
    torn down, and its loop device detached, by the kernel a moment after its last process)."""
    try:
        mine = os.stat(path)
    except FileNotFoundError:
        return False
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            name = backing.read_text().strip().removesuffix(" (deleted)")
            st = os.stat(name)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
            return True
    return False


def wait_disk_free(path: Path, timeout: float = 10.0) -> None:
    """Never mount one ext4 image twice (that corrupts it): wait for the last mount to go."""
    deadline = time.monotonic() + timeout
    while disk_in_use(path):
        if time.monotonic() > deadline:
            raise DiskError(f"the sandbox's disk {path} is still mounted by a process that outlived "
                            "the sandbox")
        time.sleep(0.02)


def disk_usage(path: Path) -> int:
    """Bytes of the host's disk the image takes (its allocated blocks)."""
    return os.stat(path).st_blocks * 512


@dataclass(frozen=True)
class CodePlan:
    binds: list[tuple[str, str, bool]]  # host source, target inside, read-only
    dirs: list[str]
    symlinks: list[tuple[str, str]]  # link target, path inside
    python: str
    bin_dir: str
    env: dict[str, str]


def code_plan(python: str, pyvenv_cfg: Path) -> CodePlan:
    """runtime.codemount's tree at CODE_ROOT, as the launcher builds it: the same binds,
    directories and symlinks (host_root=False: nothing of the host's /opt)."""
    code = code_mount(python, pyvenv_cfg, host_root=False)
    binds: list[tuple[str, str, bool]] = []
    dirs: list[str] = []
    symlinks: list[tuple[str, str]] = []
    args = iter(code.argv)
    for arg in args:
        if arg == "--perms":
            next(args)
        elif arg in ("--tmpfs", "--dir"):
            path = next(args)
            if path.startswith(CODE_ROOT + "/"):
                dirs.append(path)
        elif arg in ("--ro-bind", "--ro-bind-try", "--bind"):
            source, target = next(args), next(args)
            if target.startswith(CODE_ROOT + "/") and (arg != "--ro-bind-try" or os.path.exists(source)):
                binds.append((source, target, arg != "--bind"))
        elif arg == "--symlink":
            link, path = next(args), next(args)
            if path.startswith(CODE_ROOT + "/"):
                symlinks.append((link, path))
        else:
            raise ValueError(f"runtime.codemount uses {arg!r}, which the launcher does not know")
    return CodePlan(binds, dirs, symlinks, code.python, code.bin_dir, code.env)


def launcher_argv(
    *,
    sandbox_dir: Path,
    layers: Sequence[Path],
    id_base: int,
    egress: str,
    listen_fd: int,
    seccomp_fd: int,
    python: str = sys.executable,
    terminal_port: int = 0,
    volumes: Sequence[tuple[int, str, bool]] = (),
    volume_gids: Sequence[int] = (),
    resolv_conf: str | None = None,
    hosts: str | None = None,
    hostname: str = "sandbox",
) -> list[str]:
    """The command (run as root on the host, in the sandbox's cgroup) that starts the
    pooled daemon entry in a sandbox rooted in `layers` + its disk."""
    plan = code_plan(python, sandbox_dir / "etc" / "pyvenv.cfg")
    # Not the daemon's bin dir: user code (code-run's zygote, interpreter contexts, `python3`
    # in a shell) runs on the snapshot's own python3.
    path = os.pathsep.join(["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"])
    env = {"HOME": HOME_INSIDE, "USER": "daytona", "LOGNAME": "daytona", "SHELL": "/bin/bash",
           "LANG": "C.UTF-8", "PATH": path, "PYTHONUNBUFFERED": "1", **plan.env,
           "TOOLBOX_FD": str(listen_fd)}
    if terminal_port:
        env["TOOLBOX_TERMINAL_PORT"] = str(terminal_port)
    # hosts: the runtime's (a linked follower's names its owner), else the usual lines.
    hosts = hosts or "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    etc = {"hostname": f"{hostname}\n", "hosts": f"{hosts}127.0.1.1\t{hostname}\n"}
    if resolv_conf is not None:
        etc["resolv.conf"] = resolv_conf
    config = {
        "staging": str(sandbox_dir / STAGING),
        "disk": str(sandbox_dir / DISK_IMAGE),
        "layers": [str(p) for p in layers],
        "id_base": id_base,
        "id_count": IDS_PER_SANDBOX,
        "uid": USER_ID_INSIDE,
        "gid": USER_ID_INSIDE,
        "groups": [VOLUME_GROUPS_INSIDE + i for i in range(len(volume_gids))],
        "volume_gids": list(volume_gids),
        "volume_group_first": VOLUME_GROUPS_INSIDE,
        "own_network": egress == "none",
        "hostname": hostname,
        "etc": etc,
        "code_root": CODE_ROOT,
        "code_dirs": plan.dirs,
        "binds": plan.binds,
        "code_symlinks": plan.symlinks,
        "volumes": [list(v) for v in volumes],
        "seccomp_fd": seccomp_fd,
        "cwd": HOME_INSIDE,
        "env": env,
        "argv": [plan.python, "-m", "runtime.entry"],
        "parent": os.getpid(),
    }
    # -I: the launcher runs as host root; nothing from the environment or cwd may shadow
    # this checkout's modules.
    bootstrap = (f"import sys; sys.path.insert(0, {str(REPO_ROOT)!r}); "
                 "from runtime.rootlauncher import main; main(sys.argv)")
    return [sys.executable, "-I", "-c", bootstrap, json.dumps(config)]
