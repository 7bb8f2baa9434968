"""A finished build step's upper directory made into a layer's tree: ids shifted from the
build's host range back to the canonical ids the layer format wants (root = 0).

The step that wrote the tree has exited with its whole pid namespace, so nothing changes
it while this runs; still, nothing here follows a symlink the step wrote: directories are
opened with O_NOFOLLOW relative to their parent's descriptor, and every change is made
on the entry itself (lchown; chmod only on entries lstat says are not symlinks)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

NOBODY = 65534
_SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID


def _shift(value: int, base: int, size: int) -> int:
    if base <= value < base + size:
        return value - base
    if value == 0:  # overlayfs' whiteouts are made by the mounter (host root): root's anyway
        return 0
    return NOBODY


def _shift_entry(name: str, dir_fd: int, base: int, size: int) -> os.stat_result:
    st = os.lstat(name, dir_fd=dir_fd)
    uid, gid = _shift(st.st_uid, base, size), _shift(st.st_gid, base, size)
    if (uid, gid) != (st.st_uid, st.st_gid):
        os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
        # chown clears set-id bits of non-directories; the image meant them.
        if st.st_mode & _SPECIAL_BITS and stat.S_ISREG(st.st_mode):
            os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=dir_fd)
    return st


def _walk(dir_fd: int, base: int, size: int) -> None:
    with os.scandir(dir_fd) as entries:
        names = [entry.name for entry in entries]
    for name in names:
        st = _shift_entry(name, dir_fd, base, size)
        if stat.S_ISDIR(st.st_mode):
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
            try:
                _walk(child, base, size)
            finally:
                os.close(child)


def shift_ids(tree: Path, base: int, size: int) -> None:
    """Every entry of `tree` (and the tree itself) from host ids base.. to canonical ids."""
    root = os.open(tree, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        _walk(root, base, size)
        st = os.fstat(root)
        os.fchown(root, _shift(st.st_uid, base, size), _shift(st.st_gid, base, size))
    finally:
        os.close(root)


def is_empty(tree: Path) -> bool:
    with os.scandir(tree) as entries:
        return next(entries, None) is None
