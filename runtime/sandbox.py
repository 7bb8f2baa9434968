"""One sandbox on disk and its bubblewrap command line.

Layout of a sandbox directory (under the runtime's state root):

    sandbox.json   id, uid, env, limits, egress, token, state, mounts
    home/          the writable home and work dir, /home/daytona inside
    tmp/           the writable /tmp inside
    run/           bind-mounted at /run/toolbox: the daemon's Unix socket lives here,
                   so the proxy reaches the daemon though the sandbox has no network
    etc/passwd, etc/group   a user entry for the sandbox uid
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

from runtime.limits import Limits
from runtime.volumes import Mount

USER = "daytona"
HOME_INSIDE = "/home/daytona"
RUN_INSIDE = "/run/toolbox"
SOCKET_INSIDE = f"{RUN_INSIDE}/toolbox.sock"
TERMINAL_PORT = 22222
EGRESS = ("none", "host")
REPO_ROOT = Path(__file__).resolve().parent.parent


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

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "uid": self.uid, "gid": self.gid, "env": self.env,
            "limits": self.limits.to_json(), "egress": self.egress, "token": self.token,
            "public": self.public, "state": self.state, "created_at": self.created_at,
            "mounts": [m.to_json() for m in self.mounts],
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
    def run(self) -> Path:
        return self.path / "run"

    @property
    def socket(self) -> Path:
        return self.run / "toolbox.sock"

    @property
    def log(self) -> Path:
        return self.path / "daemon.log"

    @property
    def meta(self) -> Path:
        return self.path / "sandbox.json"

    def create(self, uid: int, gid: int) -> None:
        for d in (self.path, self.home, self.tmp, self.run, self.path / "etc"):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path, 0o755)
        os.chmod(self.tmp, 0o1777)
        os.chmod(self.home, 0o700)
        for d in (self.home, self.tmp, self.run):
            if os.geteuid() == 0:
                os.chown(d, uid, gid)
        (self.path / "etc" / "passwd").write_text(
            f"root:x:0:0:root:/root:/bin/bash\n"
            f"{USER}:x:{uid}:{gid}:sandbox user:{HOME_INSIDE}:/bin/bash\n"
            f"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        )
        (self.path / "etc" / "hostname").write_text("sandbox\n")
        (self.path / "etc" / "group").write_text(
            f"root:x:0:\n{USER}:x:{gid}:\nnogroup:x:65534:\n"
        )

    def save(self, spec: SandboxSpec) -> None:
        tmp = self.meta.with_suffix(".tmp")
        # 0600: the environment in it may carry secrets (the control plane injects them).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(spec.to_json(), indent=1))
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.meta)

    def load(self) -> SandboxSpec:
        return SandboxSpec.from_json(json.loads(self.meta.read_text()))

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _world_traversable(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & 0o001)
    except OSError:
        return False


# What a sandbox runs of this project: the daemon and the runtime's entry point.
SANDBOX_PACKAGES = ("toolbox", "runtime")


def _needed(python: str) -> list[Path]:
    # The packages rather than the checkout itself: a checkout in a private directory
    # (mktemp -d makes it 0700) would stay closed to the sandbox uid if bound whole,
    # while its packages bound into a fresh tmpfs are reachable.
    return sorted({Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(),
                   Path(python).resolve().parent.parent,
                   *(REPO_ROOT / name for name in SANDBOX_PACKAGES)})


def _blocked(path: Path) -> list[Path]:
    return [a for a in reversed(path.parents) if a != Path("/") and not _world_traversable(a)]


def _expose(python: str, hidden: list[Path]) -> list[str]:
    """Mounts that make the interpreter, its packages and this project visible to the
    sandbox uid even where they live under a hidden tree (/home, /tmp) or a private
    directory such as /root."""
    masks: list[Path] = []
    binds: list[Path] = []
    for path in _needed(python):
        blocked = _blocked(path)
        if blocked and blocked[0] not in masks:
            masks.append(blocked[0])
        if blocked or any(path == h or h in path.parents for h in hidden):
            binds.append(path)
    argv: list[str] = []
    for mask in masks:
        argv += ["--tmpfs", str(mask)]
    # Shortest first, so a nested path is mounted on top of its parent's bind.
    for path in sorted(set(binds), key=lambda p: len(p.parts)):
        for mask in masks:
            if mask in path.parents:
                # bwrap would create the directories in between as 0700 root.
                for between in reversed(path.parents):
                    if mask in between.parents:
                        argv += ["--perms", "0755", "--dir", str(between)]
        argv += ["--ro-bind", str(path), str(path)]
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
    mounts: Sequence[tuple[int, str, bool]] = (),
    groups: Sequence[int] = (),
) -> list[str]:
    """The bubblewrap command that starts the pooled daemon entry in fresh namespaces.

    As root, bwrap mounts as root and `setpriv` then becomes `run_as` (a uid of the
    sandbox's own); otherwise bwrap makes a user namespace and the sandbox keeps our uid.

    The host file system is visible read-only; /home, /run, /tmp and the runtime's state
    root are replaced, so a sandbox sees its own home, tmp and socket dir and nothing of
    other sandboxes. `mounts` are volumes as (O_PATH fd, target, read-only): bwrap binds
    the fd it inherits, never a path (see runtime.volumes); `groups` are the volumes' gids.
    """
    argv = [
        bwrap,
        "--unshare-pid", "--unshare-ipc", "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent", "--new-session",
        "--hostname", "sandbox",
        "--ro-bind", "/", "/",
        "--dev", "/dev",
        "--tmpfs", "/dev/shm",
        "--proc", "/proc",
        "--tmpfs", str(state_root),
        "--tmpfs", "/home",
        "--tmpfs", "/run",
        "--tmpfs", "/var/tmp",
        "--bind", str(sandbox.home), HOME_INSIDE,
        "--bind", str(sandbox.tmp), "/tmp",
        "--bind", str(sandbox.run), RUN_INSIDE,
        "--ro-bind", str(sandbox.path / "etc" / "passwd"), "/etc/passwd",
        "--ro-bind", str(sandbox.path / "etc" / "group"), "/etc/group",
        "--ro-bind", str(sandbox.path / "etc" / "hostname"), "/etc/hostname",
    ]
    argv += _expose(python, hidden=[state_root, Path("/home"), Path("/run"), Path("/tmp")])
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
            [str(Path(python).parent), "/usr/local/sbin", "/usr/local/bin", "/usr/sbin",
             "/usr/bin", "/sbin", "/bin"]),
        "--setenv", "PYTHONPATH", str(REPO_ROOT),
        "--setenv", "PYTHONUNBUFFERED", "1",
        "--setenv", "TOOLBOX_UDS", SOCKET_INSIDE,
    ]
    if egress == "none":
        argv.append("--unshare-net")
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
    argv += [python, "-m", "runtime.entry"]
    return argv
