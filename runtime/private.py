"""Files and directories only the runtime's user may read: they hold preview tokens.

Files are created 0600 (never chmodded after the fact, so no reader can open them in
between) and renamed into place, so readers never see half a file.
"""

from __future__ import annotations

import os
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        os.unlink(tmp)  # left by a crash; never written through (O_EXCL below)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    except BaseException:
        os.unlink(tmp)
        raise
    os.replace(tmp, path)


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) and make it 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    os.chmod(path, DIR_MODE)
    return path


def open_private_append(path: Path) -> int:
    """An fd appending to a 0600 log file; refuses a symlink in its place."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)


def owned_dir(path: Path, what: str = "state") -> Path:
    """`path` as a 0700 directory of our own. Refuses one someone else made (a shared dir
    under /var/tmp) or a symlink in its place, which chmod would follow."""
    import stat

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=DIR_MODE)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise PermissionError(f"{path} is not a directory of uid {os.geteuid()}, so it cannot hold {what}; "
                              "remove it or pick another")
    os.chmod(path, DIR_MODE)
    return path
