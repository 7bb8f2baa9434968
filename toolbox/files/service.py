"""File operations behind `/files`: list, info, mkdir, delete, move, permissions.

Plain blocking functions that know nothing about HTTP; the routes run them in worker
threads. OS errors leave as the SDK's codes through `os_errors(path)`; input
problems raise `DaemonError` with a message a person can act on.
"""

from __future__ import annotations

import ctypes
import errno
import grp
import os
import posixpath
import pwd
import shutil
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from toolbox.config import Settings
from toolbox.errors import Code, DaemonError, bad_request, from_os_error, os_errors
from toolbox.files.fileinfo import file_info
from toolbox.files.paths import resolve, walk


def parse_mode(raw: str) -> int:
    """An octal mode such as `755` or `0644`."""
    text = raw.strip()
    if text.lower().startswith("0o"):
        text = text[2:]
    try:
        mode = int(text, 8)
    except ValueError:
        raise bad_request(f"invalid mode format {raw!r}: expected octal digits such as 755 or 0644") from None
    if not 0 <= mode <= 0o7777:
        raise bad_request(f"invalid mode format {raw!r}: must be between 0 and 7777 (octal)")
    return mode


# A deep listing of a big tree (say `/` at depth 50) would take minutes and hundreds of MiB
# of JSON; past this many entries the client is told to narrow the request.
MAX_LIST_ENTRIES = 100_000


class FileService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    # -- read ------------------------------------------------------------------------------

    def list(self, raw_path: str, depth: int = 1, cancel: threading.Event | None = None) -> list[dict[str, Any]]:
        display_root = raw_path or "."
        root = resolve(self.settings, display_root)
        with os_errors(display_root):
            root_stat = os.stat(root)
            if not stat.S_ISDIR(root_stat.st_mode):
                raise bad_request(f"not a directory: {display_root} (use /files/info for a single file)")
            infos: list[dict[str, Any]] = []
            for entry in walk(root, display_root, max_depth=depth, cancel=cancel):
                if len(infos) >= MAX_LIST_ENTRIES:
                    raise bad_request(
                        f"listing {display_root} at depth {depth} exceeds {MAX_LIST_ENTRIES} entries: "
                        "ask for a smaller depth or a subdirectory"
                    )
                try:
                    # Entries are stat'ed through symlinks; dangling ones are skipped.
                    infos.append(file_info(entry.name, os.stat(entry.path), entry.display))
                except OSError:
                    continue
        return infos

    def info(self, raw_path: str) -> dict[str, Any]:
        path = resolve(self.settings, raw_path)
        with os_errors(raw_path):
            st = os.stat(path)
        name = posixpath.basename(posixpath.normpath(str(path))) or "/"
        return file_info(name, st, raw_path)

    # -- write -----------------------------------------------------------------------------

    def create_folder(self, raw_path: str, raw_mode: str | None) -> None:
        mode = parse_mode(raw_mode) if raw_mode else 0o755
        path = resolve(self.settings, raw_path)
        try:
            os.makedirs(path, mode, exist_ok=True)
        except FileExistsError:
            raise bad_request(f"cannot create folder {raw_path}: a file with that name exists") from None
        except OSError as exc:
            error = from_os_error(exc, raw_path)
            if error.code == Code.CONFLICT:
                error = bad_request(f"cannot create folder {raw_path}: {exc.strerror}")
            raise error from exc

    def delete(self, raw_path: str, recursive: bool) -> None:
        path = resolve(self.settings, raw_path)
        if os.path.normpath(path) == "/":
            raise bad_request("refusing to delete the root directory /")
        with os_errors(raw_path):
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode):
                if not recursive:
                    raise bad_request(
                        f"cannot delete directory without recursive flag: {raw_path} (pass recursive=true)"
                    )
                shutil.rmtree(path)
            else:
                os.unlink(path)

    def move(self, raw_source: str, raw_destination: str) -> dict[str, str] | None:
        """Rename, or copy-then-delete across file systems (as Daytona's daemon does)."""
        source = resolve(self.settings, raw_source, "source")
        destination = resolve(self.settings, raw_destination, "destination")
        with os_errors(raw_source):
            os.lstat(source)
        with os_errors(str(Path(raw_destination).parent)):
            os.stat(destination.parent)
        if os.path.lexists(destination):
            raise DaemonError(Code.CONFLICT, f"destination already exists: {raw_destination}")
        try:
            os.rename(source, destination)
            return None
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise from_os_error(exc, raw_source) from exc
        with os_errors(raw_source):
            _check_copyable(source, raw_source)
        with os_errors(raw_destination):
            if os.path.isdir(source) and not os.path.islink(source):
                shutil.copytree(source, destination, symlinks=True)
            else:
                shutil.copy2(source, destination, follow_symlinks=False)
        try:
            if os.path.isdir(source) and not os.path.islink(source):
                shutil.rmtree(source)
            else:
                os.unlink(source)
        except OSError as exc:
            return {"message": "file copied successfully but source could not be deleted", "error": str(exc)}
        return None

    def set_permissions(
        self, raw_path: str, raw_mode: str | None, owner: str | None, group: str | None
    ) -> None:
        path = resolve(self.settings, raw_path)
        mode = parse_mode(raw_mode) if raw_mode else None
        uid = _user_id(owner) if owner else -1
        gid = _group_id(group) if group else -1
        with os_errors(raw_path):
            os.stat(path)
            if mode is not None:
                os.chmod(path, mode)
            if uid != -1 or gid != -1:
                os.chown(path, uid, gid)


_MAX_ID = 2**32 - 2


def _user_id(owner: str) -> int:
    return _account_id(owner, "uid", "user", lambda name: pwd.getpwnam(name).pw_uid)


def _group_id(group: str) -> int:
    return _account_id(group, "gid", "group", lambda name: grp.getgrnam(name).gr_gid)


def _account_id(text: str, number_kind: str, name_kind: str, lookup: Callable[[str], int]) -> int:
    """A numeric id as given, or the id of a named account."""
    # isascii: str.isdigit() also accepts digits such as "²" that int() refuses.
    if text.isascii() and text.isdigit():
        number = int(text)
        if number > _MAX_ID:
            raise bad_request(f"{number_kind} {text} is out of range")
        return number
    try:
        return lookup(text)
    except KeyError:
        raise bad_request(
            f"{name_kind} not found: {text!r} (give a {name_kind} name or a numeric {number_kind})"
        ) from None


# statfs(2) magic numbers of kernel file systems whose files are views, not data: /proc's
# pagemap reads as tens of gigabytes, /sys's as whatever the kernel makes up.
_PSEUDO_FILE_SYSTEMS = {0x9FA0: "proc", 0x62656572: "sysfs", 0x27E0EB: "cgroup", 0x63677270: "cgroup2",
                        0x64626720: "debugfs", 0x74726163: "tracefs", 0x73636673: "securityfs",
                        0x1CD1: "devpts", 0xCAFE4A11: "bpf", 0x6E736673: "nsfs", 0x50495045: "pipefs"}
_libc = ctypes.CDLL(None, use_errno=True)


def _file_system_type(path: str) -> int:
    buffer = ctypes.create_string_buffer(256)  # struct statfs: f_type is its first field, a long
    if _libc.statfs(os.fsencode(path), buffer) != 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number), path)
    return ctypes.c_long.from_buffer(buffer).value


def _check_copyable(source: str | os.PathLike[str], raw_source: str) -> None:
    """A move across file systems copies, so what it moves must be data: never a tree on a
    kernel file system, a mount inside the tree (its contents are not the tree's), or a
    device, FIFO or socket (a copy of /dev/zero never ends, one of a FIFO waits forever).
    Checked before anything is copied, so a refused move leaves both sides as they were."""
    source = os.fspath(source)
    kind = _PSEUDO_FILE_SYSTEMS.get(_file_system_type(source))
    if kind is not None:
        raise bad_request(f"cannot move {raw_source}: it is on the kernel's {kind} file system, "
                          "whose files are views of the system, not data to copy")
    device = os.lstat(source).st_dev
    entries = [source]
    if os.path.isdir(source) and not os.path.islink(source):
        for root, dirs, files in os.walk(source, onerror=_raise):
            entries += [os.path.join(root, name) for name in dirs + files]
    for entry in entries:
        st = os.lstat(entry)
        if st.st_dev != device and stat.S_ISDIR(st.st_mode):
            raise bad_request(f"cannot move {raw_source} across file systems: "
                              f"{entry} is another file system mounted inside it")
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            raise bad_request(f"cannot move {raw_source} across file systems: {entry} is a device, FIFO "
                              "or socket, which a copy cannot carry")


def _raise(error: OSError) -> None:
    raise error
