"""Volumes: host directories bind-mounted into sandboxes, safely against planted symlinks.

A volume is a directory the control plane's backend makes with `make_volume` (e.g.
`STATE/volumes/<volumeId>/`); a mount is `volume_dir/subpath` at a `target` inside the
sandbox. Several sandboxes, each with its own uid, may share a volume at once.

**Permissions: one shared group per volume.** `make_volume` gives the directory a gid of
its own from `VOLUME_GID_BASE` up (root:gid, mode 2770: setgid, so everything made inside
inherits the group). A sandbox started with a mount of that volume gets the gid as a
supplementary group, and its processes run with umask 002 (`runtime.entry`), so what one
sandbox writes in the volume the others can change too, while nothing else on the host can
enter it (mode 2770, and `STATE/volumes` itself is 0700 root). The gid is taken from the
first directory on the source path that has the setgid bit and a gid in the volume range,
walking down from `/`: that is the volume's root, made by root; directories a sandbox made
further down cannot name a group for others to join.

**Symlinks.** Sandboxes sharing a volume can write anything into it, for example a
symlink `vol/sub -> /etc`. bwrap mounts as root, so the source is never handed to it as a
path: `open_source` walks it one component at a time with `O_PATH | O_NOFOLLOW` relative
to the directory opened before, refuses any symlink, and bwrap gets the final directory's
file descriptor (`--bind-fd FD DEST`). The fd pins the very directory that was checked, so
a rename in between changes nothing. `make_subpath` creates a missing subpath the same way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

VOLUME_GID_BASE = 900_000  # far above the sandboxes' own uids/gids (200000 + n)
VOLUME_GID_MAX = 999_999
# Daytona's rule (apps/api/src/sandbox/utils/volume-mount-path-validation.util.ts).
FORBIDDEN_TARGETS = ("/proc", "/sys", "/dev", "/boot", "/etc", "/bin", "/sbin", "/lib", "/lib64")


class MountError(ValueError):
    """A mount that cannot be made; the message says what to change."""


@dataclass(frozen=True)
class Mount:
    source: Path
    target: str
    read_only: bool = False

    def to_json(self) -> dict[str, object]:
        return {"source": str(self.source), "target": self.target, "read_only": self.read_only}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Mount:
        return cls(Path(str(data["source"])), str(data["target"]), bool(data.get("read_only", False)))


def validate_target(target: str, reserved: tuple[str, ...] = (), sealed: tuple[str, ...] = ()) -> str:
    """Daytona's `mountPath` rules, plus the runtime's own mounts: a volume may not be or
    cover one of `reserved` (it may lie below one, e.g. ~/data), nor lie below `sealed`."""
    if not isinstance(target, str) or not target.startswith("/"):
        raise MountError(f"mount path {target!r} must be an absolute path")
    if target == "/" or "//" in target or "\0" in target:
        raise MountError(f"mount path {target!r} must not be / or contain //")
    parts = target.rstrip("/").split("/")[1:]
    if any(p in (".", "..") for p in parts):
        raise MountError(f"mount path {target!r} must not contain . or .. components")
    clean = "/" + "/".join(parts)
    for forbidden in FORBIDDEN_TARGETS:
        if clean == forbidden or clean.startswith(forbidden + "/"):
            raise MountError(f"mount path {target!r} must not be or lie under {forbidden}")
    for own in reserved + sealed:
        if clean == own or own.startswith(clean + "/"):
            raise MountError(f"mount path {target!r} would cover the sandbox's own {own}")
    for own in sealed:
        if clean.startswith(own + "/"):
            raise MountError(f"mount path {target!r} must not lie under {own}")
    return clean


def validate_subpath(subpath: str) -> str:
    """A relative path below the volume's root ("" for the root itself)."""
    if not isinstance(subpath, str) or "\0" in subpath:
        raise MountError(f"subpath {subpath!r} must be a string")
    if subpath.startswith("/"):
        raise MountError(f"subpath {subpath!r} must be relative to the volume")
    parts = [p for p in subpath.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise MountError(f"subpath {subpath!r} must not contain ..")
    return "/".join(parts)


def _components(path: Path) -> list[str]:
    pure = PurePosixPath(path)
    if not pure.is_absolute():
        raise MountError(f"mount source {str(path)!r} must be an absolute path")
    parts = list(pure.parts[1:])
    if any(p in (".", "..") for p in parts):
        raise MountError(f"mount source {str(path)!r} must not contain . or ..")
    return parts


def _open_dir_at(parent: int, name: str, shown: str) -> int:
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    except FileNotFoundError:
        raise MountError(f"mount source {shown!r} does not exist") from None
    st = os.fstat(fd)
    if stat.S_ISLNK(st.st_mode):
        os.close(fd)
        raise MountError(f"mount source {shown!r} is a symbolic link; refusing to follow it")
    if not stat.S_ISDIR(st.st_mode):
        os.close(fd)
        raise MountError(f"mount source {shown!r} is not a directory")
    return fd


def open_source(path: Path) -> tuple[int, int | None]:
    """An `O_PATH` fd of the directory at `path`, reached without following any symlink,
    and the volume gid found on the way (None if there is none). The caller closes the fd."""
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    gid: int | None = None
    shown = ""
    try:
        for name in _components(path):
            shown += "/" + name
            child = _open_dir_at(fd, name, shown)
            os.close(fd)
            fd = child
            st = os.fstat(fd)
            if gid is None and st.st_mode & stat.S_ISGID and VOLUME_GID_BASE <= st.st_gid <= VOLUME_GID_MAX:
                gid = st.st_gid
    except BaseException:
        os.close(fd)
        raise
    return fd, gid


def make_subpath(volume_dir: Path, subpath: str) -> Path:
    """Create `volume_dir/subpath` (each missing directory, group-writable) without
    following a symlink a sandbox planted in the volume; returns the path to mount."""
    clean = validate_subpath(subpath)
    fd, _ = open_source(volume_dir)
    shown = str(volume_dir)
    try:
        for name in clean.split("/") if clean else []:
            shown += "/" + name
            try:
                os.mkdir(name, 0o700, dir_fd=fd)
            except FileExistsError:
                pass
            else:
                # Group-writable like the volume's root (mkdir's mode is cut by our umask);
                # the gid comes from the setgid parent.
                made = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                               dir_fd=fd)
                try:
                    os.fchmod(made, 0o2770)
                finally:
                    os.close(made)
            child = _open_dir_at(fd, name, shown)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)
    return volume_dir / clean if clean else volume_dir


def _used_gids(parent: Path) -> set[int]:
    used = set()
    with os.scandir(parent) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                used.add(entry.stat(follow_symlinks=False).st_gid)
    return used


def make_volume(path: Path) -> None:
    """Create a volume directory: root:<own gid> 2770 under a 0700 parent when we are root
    (see the module docstring); a plain 0700 directory of ours otherwise."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.parent.stat().st_mode & 0o077:
        # Sandboxes reach volumes through their binds only; the host's users not at all.
        raise MountError(f"the volumes directory {str(path.parent)!r} must be mode 0700")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        raise MountError(f"volume directory {str(path)!r} already exists") from None
    if os.geteuid() != 0:
        return
    used = _used_gids(path.parent)
    gid = next((g for g in range(VOLUME_GID_BASE, VOLUME_GID_MAX + 1) if g not in used), None)
    if gid is None:
        os.rmdir(path)
        raise MountError("no free volume gid left")
    os.chown(path, 0, gid)
    os.chmod(path, 0o2770)


def remove_volume(path: Path) -> None:
    """Delete a volume directory and everything in it. `shutil.rmtree` works on fds here
    (`rmtree.avoids_symlink_attacks`), so a symlink a sandbox left inside is removed, never
    followed; the caller makes sure no sandbox mounts the volume any more."""
    if not shutil.rmtree.avoids_symlink_attacks:  # pragma: no cover - Linux has openat
        raise MountError("this platform cannot delete a volume without following symlinks")
    if path.is_symlink() or not path.is_dir():
        raise MountError(f"volume directory {str(path)!r} is not a directory")
    shutil.rmtree(path)


def is_volume_gid(gid: int) -> bool:
    return VOLUME_GID_BASE <= gid <= VOLUME_GID_MAX


@dataclass
class OpenedMounts:
    """Mount sources opened for one bwrap launch: bwrap's (fd, target, read-only) binds
    and the volume gids the sandbox's uid joins. Close once bwrap has started."""

    binds: list[tuple[int, str, bool]] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)

    @property
    def fds(self) -> list[int]:
        return [fd for fd, _, _ in self.binds]

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.binds.clear()


def open_mounts(mounts: Sequence[Mount]) -> OpenedMounts:
    """Open every mount's source with `open_source`; all or nothing."""
    opened = OpenedMounts()
    try:
        for mount in mounts:
            fd, gid = open_source(mount.source)
            opened.binds.append((fd, mount.target, mount.read_only))
            if gid is not None and gid not in opened.groups:
                opened.groups.append(gid)
    except BaseException:
        opened.close()
        raise
    return opened
