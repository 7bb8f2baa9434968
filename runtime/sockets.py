"""Where a sandbox's daemon socket lives, and the socket the runtime hands the daemon.

The proxy runs as root and connects to these paths, so they must be out of every
sandbox's reach: `STATE/sockets/` is 0700 and owned by the runtime, and a sandbox never
sees the state root (it is a tmpfs inside every sandbox). The runtime binds the socket
itself and passes the file descriptor through bwrap; the daemon only calls listen() on
it, so it never names a path, and `SO_PEERCRED` on a connection reports the daemon's
(the sandbox's) uid, because Linux records the credentials of the process that listens.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

SOCKETS = "sockets"
# Pooled sandboxes have no id yet; a leading dot keeps their names apart from every
# valid sandbox id (runtime.sandbox.valid_id).
_POOLED_PREFIX = ".pool-"


def sockets_dir(state_root: Path) -> Path:
    return state_root / SOCKETS


def socket_path(state_root: Path, sandbox_id: str) -> Path:
    """The one answer to "where is sandbox X's socket": used by the runtime's registry,
    `runtime get` and the control-plane backend's address()."""
    return sockets_dir(state_root) / f"{sandbox_id}.sock"


def pooled_socket_path(state_root: Path, name: str) -> Path:
    return sockets_dir(state_root) / f"{_POOLED_PREFIX}{name}.sock"


def ensure_sockets_dir(state_root: Path) -> Path:
    """Create STATE/sockets 0700; refuse anything that is not our own real directory."""
    directory = sockets_dir(state_root)
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise OSError(f"{directory} is not a directory owned by uid {os.geteuid()}")
    os.chmod(directory, 0o700)
    return directory


def bind_unlistened(path: Path) -> socket.socket:
    """A Unix stream socket bound at `path` (replacing a stale one) but not listening yet.

    The daemon listens on the inherited descriptor: until then connections are refused,
    exactly as before a daemon created its own socket."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
    except OSError:
        sock.close()
        raise
    return sock


def remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
