"""The Linux calls the sandbox launcher needs that Python's os module lacks (x86_64, ctypes).

Namespaces (unshare, setns), the classic mount(2) family, the new mount API (open_tree,
move_mount, mount_setattr with MOUNT_ATTR_IDMAP, fsopen/fsconfig/fsmount) and loading a
seccomp program. Every wrapper raises OSError with the call's errno.
"""

from __future__ import annotations

import ctypes
import os
import platform

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]

if platform.machine() not in ("x86_64", "AMD64"):  # numbers below are x86_64's
    raise ImportError(f"runtime.linux knows the system call numbers of x86_64 only, not {platform.machine()}")
SYS_PIVOT_ROOT = 155
SYS_SETNS = 308
SYS_UNSHARE = 272
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_FSOPEN = 430
SYS_FSCONFIG = 431
SYS_FSMOUNT = 432
SYS_MOUNT_SETATTR = 442

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
MOUNT_ATTR_IDMAP = 0x100000
FSOPEN_CLOEXEC = 1
FSMOUNT_CLOEXEC = 1
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6

PR_SET_PDEATHSIG = 1
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _path(path: str | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


def unshare(flags: int) -> None:
    _check(_libc.syscall(SYS_UNSHARE, ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.syscall(SYS_SETNS, ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    _check(_libc.mount(_path(source), _path(target), _path(fstype), flags, _path(data)),
           f"mount {fstype or source} on {target}")


def umount(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_path(target), ctypes.c_int(flags)), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.syscall(SYS_PIVOT_ROOT, _path(new_root), _path(put_old)), "pivot_root")


def open_tree(path: str, *, recursive: bool = False, dirfd: int = AT_FDCWD) -> int:
    """A detached copy of the mount at `path` (a bind mount not yet attached anywhere)."""
    flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | (AT_RECURSIVE if recursive else 0)
    if dirfd != AT_FDCWD and not path:
        flags |= AT_EMPTY_PATH
    return _check(_libc.syscall(SYS_OPEN_TREE, ctypes.c_int(dirfd), _path(path), ctypes.c_uint(flags)),
                  f"open_tree {path}")


def mount_setattr(fd: int, attr_set: int, *, attr_clr: int = 0, userns_fd: int = 0,
                  path: str = "", recursive: bool = False) -> None:
    attr = _MountAttr(attr_set, attr_clr, 0, userns_fd)
    flags = (AT_EMPTY_PATH if not path else 0) | (AT_RECURSIVE if recursive else 0)
    _check(_libc.syscall(SYS_MOUNT_SETATTR, ctypes.c_int(fd), _path(path), ctypes.c_uint(flags),
                         ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))), "mount_setattr")


def move_mount(fd: int, target: str) -> None:
    """Attach the detached mount `fd` at `target`."""
    _check(_libc.syscall(SYS_MOVE_MOUNT, ctypes.c_int(fd), b"", ctypes.c_int(AT_FDCWD), _path(target),
                         ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH)), f"move_mount to {target}")


def fs_mount(fstype: str, options: dict[str, str], attrs: int = 0) -> int:
    """A new detached file system mount (fsopen + fsconfig + fsmount)."""
    fs = _check(_libc.syscall(SYS_FSOPEN, _path(fstype), ctypes.c_uint(FSOPEN_CLOEXEC)), f"fsopen {fstype}")
    try:
        for key, value in options.items():
            _check(_libc.syscall(SYS_FSCONFIG, ctypes.c_int(fs), ctypes.c_uint(FSCONFIG_SET_STRING),
                                 _path(key), _path(value), ctypes.c_int(0)), f"fsconfig {fstype} {key}")
        _check(_libc.syscall(SYS_FSCONFIG, ctypes.c_int(fs), ctypes.c_uint(FSCONFIG_CMD_CREATE),
                             None, None, ctypes.c_int(0)), f"fsconfig {fstype} create")
        return _check(_libc.syscall(SYS_FSMOUNT, ctypes.c_int(fs), ctypes.c_uint(FSMOUNT_CLOEXEC),
                                    ctypes.c_uint(attrs)), f"fsmount {fstype}")
    finally:
        os.close(fs)


def set_pdeathsig(sig: int) -> None:
    _check(_libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(sig), 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")


def load_seccomp(program: bytes) -> None:
    """Install a classic BPF seccomp program (8 bytes per instruction). Without
    no_new_privs the kernel wants CAP_SYS_ADMIN in the caller's own user namespace."""
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    _check(_libc.prctl(PR_SET_SECCOMP, ctypes.c_ulong(SECCOMP_MODE_FILTER), ctypes.byref(prog), 0, 0),
           "prctl(PR_SET_SECCOMP)")
