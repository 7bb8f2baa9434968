"""One sandbox on disk and its bubblewrap command line.

Layout of a sandbox directory (under the runtime's state root):

    sandbox.json   id, uid, env, limits, egress, token, state, mounts
    home/          the writable home and work dir, /home/daytona inside
    tmp/           the writable /tmp inside
    (no socket: the daemon's socket is in STATE/sockets/, out of the sandbox's reach,
     and handed to it as a descriptor; see runtime/sockets.py)
    etc/passwd, etc/group, etc/hostname   the sandbox's own, mounted into a generated /etc
    daemon.log     the daemon's stderr
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.codemount import PYVENV_CFG, code_mount
from runtime.limits import Limits
from runtime.private import DIR_MODE, write_private
from runtime.ownroot import DISK_IMAGE, STAGING, make_disk
from runtime.volumes import Mount

USER = "daytona"
HOME_INSIDE = "/home/daytona"
TERMINAL_PORT = 22222
# none: loopback only; host: the host's network namespace; nat: its own netns, address and
# NAT egress (runtime/network.py, root only).
EGRESS = ("none", "host", "nat")


def new_id() -> str:
    return secrets.token_hex(6)


def valid_id(sandbox_id: str) -> bool:
    # One DNS label usable in `{port}-{id}.{domain}`; no dots, no leading digit-dash trap.
    return (
        0 < len(sandbox_id) <= 63
        and all(c.isalnum() and c.isascii() or c == "-" for c in sandbox_id)
        and not sandbox_id.startswith("-")
        and not sandbox_id.endswith("-")
        and sandbox_id == sandbox_id.lower()
    )


@dataclass
class SandboxSpec:
    """What a sandbox is, independent of whether it runs."""

    id: str
    uid: int
    gid: int
    env: dict[str, str] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    egress: str = "none"
    token: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    public: bool = False
    state: str = "stopped"  # stopped, started or archived
    created_at: float = field(default_factory=time.time)
    mounts: tuple[Mount, ...] = ()
    # egress "nat": its own address (kept across stop/start) and Daytona's network policy.
    address: str | None = None
    block_all: bool = False
    allow_list: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()  # Daytona's domainAllowList (runtime/dns.py)
    # A linked follower: its owner's id, and the names the owner answers to in its /etc/hosts.
    link_to: str | None = None
    link_names: tuple[str, ...] = ()
    # Its own root (runtime/ownroot.py): the snapshot it was made from, that snapshot's layer
    # digests then (so a deleted snapshot's sandboxes keep working), the base of its own
    # 65536 host ids (uid above is base + 1000, its user and daemon) and its disk quota.
    snapshot: str | None = None
    layers: tuple[str, ...] = ()
    id_base: int | None = None
    disk_gib: float = 0

    @property
    def rooted(self) -> bool:
        return self.id_base is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "uid": self.uid, "gid": self.gid, "env": self.env,
            "limits": self.limits.to_json(), "egress": self.egress, "token": self.token,
            "public": self.public, "state": self.state, "created_at": self.created_at,
            "mounts": [m.to_json() for m in self.mounts], "address": self.address,
            "block_all": self.block_all, "allow_list": list(self.allow_list),
            "domains": list(self.domains), "link_to": self.link_to, "link_names": list(self.link_names),
            "snapshot": self.snapshot, "layers": list(self.layers), "id_base": self.id_base,
            "disk_gib": self.disk_gib,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SandboxSpec:
        return cls(
            id=data["id"], uid=int(data["uid"]), gid=int(data["gid"]),
            env=dict(data.get("env") or {}), limits=Limits.from_json(data.get("limits")),
            egress=data.get("egress", "none"), token=data["token"],
            public=bool(data.get("public", False)), state=data.get("state", "stopped"),
            created_at=float(data.get("created_at", time.time())),
            mounts=tuple(Mount.from_json(m) for m in data.get("mounts") or ()),
            address=data.get("address"), block_all=bool(data.get("block_all", False)),
            allow_list=tuple(data.get("allow_list") or ()),
            domains=tuple(data.get("domains") or ()), link_to=data.get("link_to"),
            link_names=tuple(data.get("link_names") or ()),
            snapshot=data.get("snapshot"), layers=tuple(data.get("layers") or ()),
            id_base=None if data.get("id_base") is None else int(data["id_base"]),
            disk_gib=float(data.get("disk_gib") or 0),
        )


class SandboxDir:
    """The host directory of one sandbox."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def home(self) -> Path:
        return self.path / "home"

    @property
    def tmp(self) -> Path:
        return self.path / "tmp"

    @property
    def log(self) -> Path:
        return self.path / "daemon.log"

    @property
    def meta(self) -> Path:
        return self.path / "sandbox.json"

    def create(self, uid: int, gid: int) -> None:
        for d in (self.path, self.home, self.tmp, self.path / "etc"):
            d.mkdir(parents=True, exist_ok=True)
        # Only root (bwrap mounts as root) and the runtime need the way in: its files hold
        # the token, and inside the sandbox its home and tmp are reached by bind mounts.
        os.chmod(self.path, DIR_MODE)
        os.chmod(self.tmp, 0o1777)
        os.chmod(self.home, 0o700)
        for d in (self.home, self.tmp):
            if os.geteuid() == 0:
                os.chown(d, uid, gid)
        (self.path / "etc" / "passwd").write_text(
            f"root:x:0:0:root:/root:/bin/bash\n"
            f"{USER}:x:{uid}:{gid}:sandbox user:{HOME_INSIDE}:/bin/bash\n"
            f"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        )
        (self.path / "etc" / "hostname").write_text("sandbox\n")
        (self.path / "etc" / "pyvenv.cfg").write_text(PYVENV_CFG)
        (self.path / "etc" / "group").write_text(
            f"root:x:0:\n{USER}:x:{gid}:\nnogroup:x:65534:\n"
        )

    @property
    def disk(self) -> Path:
        return self.path / DISK_IMAGE

    def create_rooted(self, disk_gib: float) -> None:
        """The directory of a sandbox with its own root: its disk image (made once), the
        launcher's staging mount point and the venv config the code mount binds."""
        for d in (self.path, self.path / STAGING, self.path / "etc"):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path, DIR_MODE)
        (self.path / "etc" / "pyvenv.cfg").write_text(PYVENV_CFG)
        if not self.disk.exists():
            make_disk(self.disk, disk_gib)

    def save(self, spec: SandboxSpec) -> None:
        # 0600: the environment in it may carry secrets (the control plane injects them).
        write_private(self.meta, json.dumps(spec.to_json(), indent=1).encode())

    def load(self) -> SandboxSpec:
        return SandboxSpec.from_json(json.loads(self.meta.read_text()))

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


# The sandbox's own versions of these replace the host's (runtime/sandbox.py create()).
GENERATED_ETC = ("passwd", "group", "hostname")
# Generated only when the sandbox has a network of its own (its gateway is its resolver),
# hosts only for a linked follower (its owner's names).
OPTIONAL_ETC = ("resolv.conf", "hosts")
HOST_ETC_INSIDE = "/run/host/etc"


def etc_mounts(generated: Path, host_etc: Path = Path("/etc")) -> list[str]:
    """A tmpfs /etc of symlinks into the host's /etc (bound whole, read-only, at
    /run/host/etc), with the sandbox's generated passwd, group and hostname in place.

    A bind of a single file over the host's /etc/passwd is attached to that file: when a
    package install renames a new /etc/passwd into place, the sandbox would see the new
    host file instead of its own (`whoami` fails). Here /etc is the sandbox's own
    directory and never changes; host renames only swap entries of the host's directory,
    which the symlinks follow live. Symlinks rather than a bind per entry: ~140 binds
    made bwrap ~220 ms slower, the symlinks cost nothing measurable."""
    # bwrap would create /run/host 0700 root: closed to the sandbox uid.
    argv = ["--perms", "0755", "--dir", str(Path(HOST_ETC_INSIDE).parent),
            "--ro-bind", str(host_etc), HOST_ETC_INSIDE, "--tmpfs", "/etc"]
    generated_names = [*GENERATED_ETC, *(n for n in OPTIONAL_ETC if (generated / n).exists())]
    with os.scandir(host_etc) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name in generated_names:
                continue
            inside = f"/etc/{entry.name}"
            if entry.is_symlink():
                argv += ["--symlink", os.readlink(entry.path), inside]  # relative ones still resolve
            else:
                argv += ["--symlink", f"{HOST_ETC_INSIDE}/{entry.name}", inside]
    for name in generated_names:
        argv += ["--ro-bind", str(generated / name), f"/etc/{name}"]
    return argv


def bwrap_argv(
    sandbox: SandboxDir,
    *,
    state_root: Path,
    egress: str,
    python: str = sys.executable,
    terminal_port: int = TERMINAL_PORT,
    bwrap: str = "bwrap",
    run_as: tuple[int, int] | None = None,
    listen_fd: int | None = None,
    seccomp_fd: int | None = None,
    mounts: Sequence[tuple[int, str, bool]] = (),
    groups: Sequence[int] = (),
) -> list[str]:
    """The bubblewrap command that starts the pooled daemon entry in fresh namespaces.

    As root, bwrap mounts as root and `setpriv` then becomes `run_as` (a uid of the
    sandbox's own); otherwise bwrap makes a user namespace and the sandbox keeps our uid.

    The host file system is visible read-only; /home, /run, /tmp and the runtime's state
    root are replaced, so a sandbox sees its own home and tmp and nothing of other
    sandboxes. `listen_fd` is the daemon's bound socket, inherited through bwrap;
    `seccomp_fd` holds the compiled syscall filter (runtime/seccomp.py). `mounts` are
    volumes as (O_PATH fd, target, read-only): bwrap binds the fd it inherits, never a
    path (see runtime.volumes); `groups` are the volumes' gids.
    """
    argv = [
        bwrap,
        "--unshare-pid", "--unshare-ipc", "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent", "--new-session",
        "--hostname", "sandbox",
        "--ro-bind", "/", "/",
        "--dev", "/dev",
        # POSIX semaphores and shared memory (multiprocessing.Lock) need a sticky,
        # world-writable /dev/shm, as on any host; its pages count against the cgroup.
        "--perms", "1777", "--tmpfs", "/dev/shm",
        "--proc", "/proc",
        "--tmpfs", str(state_root),
        "--tmpfs", "/home",
        "--tmpfs", "/run",
        "--tmpfs", "/var/tmp",
        "--bind", str(sandbox.home), HOME_INSIDE,
        "--bind", str(sandbox.tmp), "/tmp",
    ]
    argv += etc_mounts(sandbox.path / "etc")
    code = code_mount(python, sandbox.path / "etc" / "pyvenv.cfg")
    argv += code.argv
    # Shortest target first, so a nested volume is mounted on top of its parent.
    for fd, target, read_only in sorted(mounts, key=lambda m: m[1].count("/")):
        argv += ["--ro-bind-fd" if read_only else "--bind-fd", str(fd), target]
    argv += [
        "--chdir", HOME_INSIDE,
        "--clearenv",
        "--setenv", "HOME", HOME_INSIDE,
        "--setenv", "USER", USER,
        "--setenv", "LOGNAME", USER,
        "--setenv", "SHELL", "/bin/bash",
        "--setenv", "LANG", "C.UTF-8",
        "--setenv", "PATH", os.pathsep.join(
            [code.bin_dir, "/usr/local/sbin", "/usr/local/bin", "/usr/sbin",
             "/usr/bin", "/sbin", "/bin"]),
        "--setenv", "PYTHONUNBUFFERED", "1",
    ]
    for key, value in code.env.items():
        argv += ["--setenv", key, value]
    if listen_fd is not None:
        argv += ["--setenv", "TOOLBOX_FD", str(listen_fd)]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    if egress == "none":
        argv.append("--unshare-net")
    elif egress == "nat":
        pass  # bwrap is started inside the sandbox's own netns (runtime/network.py)
    else:
        # Host network namespace: ports are shared with the host, so the unauthenticated
        # in-sandbox terminal must not listen (anyone on the host could reach it).
        terminal_port = 0
    if terminal_port:
        argv += ["--setenv", "TOOLBOX_TERMINAL_PORT", str(terminal_port)]
    argv.append("--")
    if run_as is not None:
        # bwrap ran as root so it could mount what the sandbox uid may not reach (a
        # pyenv under /root); drop to the sandbox's own uid with no capabilities at all
        # before any sandbox code runs (bwrap already set no_new_privs).
        uid, gid = run_as
        group_args = [f"--groups={','.join(map(str, groups))}"] if groups else ["--clear-groups"]
        argv += ["setpriv", f"--reuid={uid}", f"--regid={gid}", *group_args,
                 "--inh-caps=-all", "--bounding-set=-all", "--"]
    else:
        argv[1:1] = ["--unshare-user"]
    argv += [code.python, "-m", "runtime.entry"]
    return argv
