"""What a snapshot's root must have for the toolbox to serve it, checked at create time.

The daemon brings its own interpreter and libraries (runtime/codemount.py), so any libc,
or none, is fine; what it needs of the root is a POSIX shell for the commands it runs,
built for this machine. Paths are looked up in the snapshot's layers as overlayfs would
merge them (whiteouts, opaque directories, symlinks inside the root), without mounting.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from runtime import launcher

_ELF_MACHINES = {3: "i386", 62: "x86_64", 40: "arm", 183: "aarch64", 243: "riscv64", 8: "mips",
                 21: "ppc64", 22: "s390x"}


class UnsupportedRoot(Exception):
    """A root file system the toolbox cannot serve; the message names what is missing."""


def _whiteout(path: str) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _opaque(path: str) -> bool:
    try:
        return os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False


def _entry(layers: list[Path], parts: list[str]) -> str | None:
    """The host path of /parts in the overlay of `layers` (top first), without following
    a symlink in the last part; None if absent or whited out."""
    for layer in layers:
        hidden = False
        for depth in range(1, len(parts)):
            prefix = os.path.join(layer, *parts[:depth])
            if _whiteout(prefix) or (os.path.lexists(prefix) and not os.path.isdir(prefix)):
                return None  # whited out, or a file below a directory of an upper layer
            if _opaque(prefix):
                hidden = True
        path = os.path.join(layer, *parts) if parts else str(layer)
        if os.path.lexists(path):
            return None if _whiteout(path) else path
        if hidden:
            return None  # an opaque directory in this layer hides the lower ones
    return None


def resolve_in_layers(layers: list[Path], path: str) -> str | None:
    """The host path of `path` as the sandbox would see it in the overlay of `layers`
    (top first), following symlinks inside that root; None if it is not there."""
    todo = [p for p in path.split("/") if p]
    done: list[str] = []
    hops = 0
    while todo:
        name = todo.pop(0)
        if name == ".":
            continue
        if name == "..":
            done = done[:-1]
            continue
        found = _entry(layers, [*done, name])
        if found is None:
            return None
        if os.path.islink(found):
            hops += 1
            if hops > 40:
                return None
            target = os.readlink(found)
            if target.startswith("/"):
                done = []
            todo = [p for p in target.split("/") if p] + todo
            continue
        done.append(name)
    return _entry(layers, done)


def _elf_machine(path: str) -> str | None:
    with open(path, "rb") as f:
        head = f.read(20)
    if head[:4] != b"\x7fELF" or len(head) < 20:
        return None
    number = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    return _ELF_MACHINES.get(number, f"machine {number}")


def check_root(layers: list[Path]) -> None:
    """Raise UnsupportedRoot, naming what is missing, for a snapshot (its layer
    directories, top first) the toolbox cannot serve. The daemon brings its own
    interpreter and libraries (any libc, or none, is fine); what it needs of the root is
    a shell for the commands it runs, built for this machine."""
    if launcher.launcher() is None:
        raise UnsupportedRoot(f"sandboxes with a snapshot root need the x86-64 launcher; this host is "
                              f"{os.uname().machine}")
    shell = resolve_in_layers(layers, "/bin/sh")
    if shell is None:
        raise UnsupportedRoot("the snapshot has no /bin/sh: the toolbox runs every command through a POSIX "
                              "shell; add one to the image (e.g. dash, bash or busybox)")
    if not stat.S_ISREG(os.stat(shell).st_mode) or not os.stat(shell).st_mode & 0o111:
        raise UnsupportedRoot("the snapshot's /bin/sh is not an executable file")
    machine, host = _elf_machine(shell), os.uname().machine
    if machine is not None and machine != host:
        raise UnsupportedRoot(f"the snapshot is built for {machine} (its /bin/sh), this host runs {host}")
