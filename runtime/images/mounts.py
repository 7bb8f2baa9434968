"""The few mount syscalls Python 3.11 has no binding for: idmapped bind mounts
(open_tree + mount_setattr + move_mount, Linux >= 5.12), unshare, and mount itself.

An idmapped mount shows a layer whose files are owned by the canonical ids (root = 0)
as owned by a build's host id range (root = BASE), without touching the layer: the
layers stay shared and immutable, and a build step running as root of its own user
namespace sees its files as its own."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

_libc = ctypes.CDLL(None, use_errno=True)

SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_MOUNT_SETATTR = 442
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
AT_FDCWD = -100
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_IDMAP = 0x100000
CLONE_NEWNS = 0x20000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def unshare_mounts() -> None:
    """This process into a mount namespace of its own, nothing propagating back to the host."""
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / private")


def mount(source: str, target: Path, fstype: str, options: str) -> None:
    _check(_libc.mount(source.encode(), str(target).encode(), fstype.encode(), 0, options.encode()),
           f"mount {fstype} on {target}")


def idmapped_bind(source: Path, target: Path, userns_fd: int, *, read_only: bool = True) -> None:
    """Bind `source` at `target`, its ids shifted by the user namespace's mapping."""
    tree = _check(_libc.syscall(SYS_OPEN_TREE, AT_FDCWD, str(source).encode(),
                                OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC), f"open_tree {source}")
    try:
        attr = _MountAttr(MOUNT_ATTR_IDMAP | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID
                          | (MOUNT_ATTR_RDONLY if read_only else 0), 0, 0, userns_fd)
        _check(_libc.syscall(SYS_MOUNT_SETATTR, tree, b"", AT_EMPTY_PATH, ctypes.byref(attr),
                             ctypes.c_size_t(ctypes.sizeof(attr))), f"idmap {source}")
        _check(_libc.syscall(SYS_MOVE_MOUNT, tree, b"", AT_FDCWD, str(target).encode(),
                             MOVE_MOUNT_F_EMPTY_PATH), f"move_mount to {target}")
    finally:
        os.close(tree)


CLONE_NEWUSER = 0x10000000


def mount_handle(source: Path) -> int:
    """An O_PATH handle on the mount at `source`, to move it later with `move_to`
    (after `source` itself may have been hidden by another mount)."""
    return _check(_libc.syscall(SYS_OPEN_TREE, AT_FDCWD, str(source).encode(), OPEN_TREE_CLOEXEC),
                  f"open_tree {source}")


def move_to(mount_fd: int, target: Path) -> None:
    _check(_libc.syscall(SYS_MOVE_MOUNT, mount_fd, b"", AT_FDCWD, str(target).encode(), MOVE_MOUNT_F_EMPTY_PATH),
           f"move_mount to {target}")


class UserNamespace:
    """A user namespace mapping ids 0..size-1 to base..base+size-1 on the host, held open
    by a descriptor (a child makes it and exits; the namespace lives while the fd does)."""

    def __init__(self, base: int, size: int = 65536) -> None:
        self.base, self.size = base, size
        ready_r, ready_w = os.pipe()
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: only async-signal-safe work until _exit
            try:
                os.close(ready_r)
                os.close(go_w)
                code = 0 if _libc.unshare(CLONE_NEWUSER) == 0 else 1
                os.write(ready_w, b"x")
                os.read(go_r, 1)
            finally:
                os._exit(code if "code" in locals() else 1)
        os.close(ready_w)
        os.close(go_r)
        try:
            os.read(ready_r, 1)
            for name in ("uid_map", "gid_map"):
                with open(f"/proc/{pid}/{name}", "w") as f:
                    f.write(f"0 {base} {size}\n")
            self.fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            os.close(ready_r)
            os.close(go_w)
            os.waitpid(pid, 0)

    def enter(self, uid: int = 0, gid: int = 0) -> None:
        """In a fresh child (preexec_fn): join the namespace as `uid` of it (host base+uid);
        as root of it, it has every capability inside and none outside."""
        _check(_libc.setns(self.fd, CLONE_NEWUSER), "setns(user)")
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)

    def close(self) -> None:
        os.close(self.fd)
