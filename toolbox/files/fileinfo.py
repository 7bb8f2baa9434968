"""`FileInfo` exactly as Daytona's daemon reports it (Go `os.FileInfo` rendered to JSON).

The SDK's model is strict: every required field present, strings for `owner`/`group`
(numeric ids), an int `size`, a Go `FileMode.String()` in `mode` and Go's
`time.String()` layout in the deprecated `modTime`.
"""

from __future__ import annotations

import os
import stat
from datetime import datetime, timezone
from typing import Any

# Go's FileMode type letters, most significant bit first ("dalTLDpSugct?").
_TYPE_LETTERS = "dalTLDpSugct?"
_RWX = "rwxrwxrwx"


def go_mode_string(st_mode: int) -> str:
    """`os.FileMode(m).String()` for a Linux `st_mode`, e.g. `drwxr-xr-x`, `Dcrw-rw-rw-`."""
    letters = set()
    kind = stat.S_IFMT(st_mode)
    if kind == stat.S_IFDIR:
        letters.add("d")
    elif kind == stat.S_IFLNK:
        letters.add("L")
    elif kind == stat.S_IFBLK:
        letters.add("D")
    elif kind == stat.S_IFCHR:
        letters.update("Dc")
    elif kind == stat.S_IFIFO:
        letters.add("p")
    elif kind == stat.S_IFSOCK:
        letters.add("S")
    if st_mode & stat.S_ISUID:
        letters.add("u")
    if st_mode & stat.S_ISGID:
        letters.add("g")
    if st_mode & stat.S_ISVTX:
        letters.add("t")
    prefix = "".join(ch for ch in _TYPE_LETTERS if ch in letters) or "-"
    perms = "".join(ch if st_mode & (1 << (8 - i)) else "-" for i, ch in enumerate(_RWX))
    return prefix + perms


def _fraction(nanos: int) -> str:
    return f".{nanos:09d}".rstrip("0") if nanos else ""


def go_time_string(mtime_ns: int) -> str:
    """Go's `time.Time.String()` in UTC: `2026-06-23 15:33:38.1 +0000 UTC`."""
    seconds, nanos = divmod(mtime_ns, 1_000_000_000)
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S") + _fraction(nanos) + " +0000 UTC"


def rfc3339(mtime_ns: int) -> str:
    """RFC 3339 with nanoseconds (Go `RFC3339Nano`): `2026-06-23T15:33:38.123456789Z`."""
    seconds, nanos = divmod(mtime_ns, 1_000_000_000)
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + _fraction(nanos) + "Z"


def file_info(name: str, st: os.stat_result, path: str | None = None) -> dict[str, Any]:
    """The wire `FileInfo` of one stat result; `path` is the entry's full (client) path."""
    info: dict[str, Any] = {
        "name": name,
        "size": st.st_size,
        "mode": go_mode_string(st.st_mode),
        "modTime": go_time_string(st.st_mtime_ns),
        "modifiedAt": rfc3339(st.st_mtime_ns),
        "isDir": stat.S_ISDIR(st.st_mode),
        "owner": str(st.st_uid),
        "group": str(st.st_gid),
        "permissions": f"{stat.S_IMODE(st.st_mode) & 0o777:04o}",
    }
    if path is not None:
        info["path"] = path
    return info
