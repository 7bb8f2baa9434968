"""Content grep (`/files/find`), name glob (`/files/search`), literal replace (`/files/replace`).

Blocking functions, run in worker threads. Memory stays bounded whatever the file sizes:
lines are read with a length cap and replacement streams through a temporary file.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
import threading
from pathlib import Path
from typing import Any

from toolbox.config import Settings
from toolbox.errors import DaemonError, bad_request, from_os_error, os_errors
from toolbox.files.paths import check_cancel, check_path, resolve, walk

# Daytona skips files whose first 512 bytes contain a NUL (binary files).
_SNIFF_BYTES = 512
# Longer lines are still searched in full, but reported truncated to this many bytes.
_MAX_LINE = 64 * 1024
_COPY_CHUNK = 1024 * 1024


def _decode(line: bytes) -> str:
    return line.decode("utf-8", errors="replace")


def grep_file(path: Path, display: str, needle: bytes,
              cancel: threading.Event | None = None) -> list[dict[str, Any]]:
    """Matches of the literal `needle` in one file, line by line (1-based line numbers)."""
    matches: list[dict[str, Any]] = []
    with open(path, "rb") as handle:
        if b"\x00" in handle.read(_SNIFF_BYTES):
            return matches
        handle.seek(0)
        number = 0
        overlap = len(needle) - 1
        while True:
            piece = handle.readline(_MAX_LINE)
            if not piece:
                break
            number += 1
            if number & 0xFFF == 0:  # a huge file: notice a gone client every 4096 lines
                check_cancel(cancel)
            head = piece
            found = needle in piece
            tail = piece[-overlap:] if overlap else b""
            # A line longer than the cap arrives in pieces: keep reading to its end.
            while not piece.endswith(b"\n") and len(piece) == _MAX_LINE:
                piece = handle.readline(_MAX_LINE)
                if not piece:
                    break
                if not found:
                    found = needle in tail + piece
                    tail = (tail + piece)[-overlap:] if overlap else b""
            if found:
                content = head[:-1] if head.endswith(b"\n") else head
                if content.endswith(b"\r"):
                    content = content[:-1]
                matches.append({"file": display, "line": number, "content": _decode(content)})
    return matches


def find_in_files(settings: Settings, raw_path: str, pattern: str,
                  cancel: threading.Event | None = None) -> list[dict[str, Any]]:
    root = resolve(settings, raw_path)
    if pattern == "":
        raise bad_request("query parameter 'pattern' is required (the literal text to search for)")
    needle = pattern.encode("utf-8", errors="surrogateescape")
    matches: list[dict[str, Any]] = []
    with os_errors(raw_path):
        if stat.S_ISREG(os.stat(root).st_mode):
            return grep_file(root, raw_path, needle, cancel)
        for entry in walk(root, raw_path, cancel=cancel):
            if entry.is_file:
                try:
                    matches.extend(grep_file(entry.path, entry.display, needle, cancel))
                except OSError:
                    continue  # unreadable files are skipped, as in Daytona
    return matches


def glob_regex(pattern: str) -> re.Pattern[str]:
    """Go's `filepath.Match` syntax (`*`, `?`, `[a-z]`, `[^...]`, `\\` escapes) as a regex."""
    out: list[str] = []
    i, n = 0, len(pattern)

    def bad(reason: str) -> DaemonError:
        return bad_request(f"invalid glob pattern {pattern!r}: {reason}")

    def class_char(j: int) -> tuple[str, int]:
        if j >= n:
            raise bad("unterminated character class")
        ch = pattern[j]
        if ch in "-]":
            raise bad(f"unescaped {ch!r} in character class")
        if ch == "\\":
            j += 1
            if j >= n:
                raise bad("trailing backslash")
            ch = pattern[j]
        return ch, j + 1

    while i < n:
        ch = pattern[i]
        if ch == "*":
            out.append("[^/]*")
            i += 1
        elif ch == "?":
            out.append("[^/]")
            i += 1
        elif ch == "\\":
            if i + 1 >= n:
                raise bad("trailing backslash")
            out.append(re.escape(pattern[i + 1]))
            i += 2
        elif ch == "[":
            i += 1
            negate = i < n and pattern[i] == "^"
            if negate:
                i += 1
            ranges: list[str] = []
            while True:
                if i < n and pattern[i] == "]" and ranges:
                    i += 1
                    break
                low, i = class_char(i)
                high = low
                if i < n and pattern[i] == "-":
                    high, i = class_char(i + 1)
                # A reversed range matches nothing in Go; keep the class valid for `re`.
                ranges.append(f"{re.escape(low)}-{re.escape(high)}" if low <= high else "")
            body = "".join(ranges)
            if negate:
                out.append(f"[^/{body}]" if body else "[^/]")
            else:
                out.append(f"[{body}]" if body else "(?!)")
        else:
            out.append(re.escape(ch))
            i += 1
    return re.compile("".join(out), re.DOTALL)


def search_files(settings: Settings, raw_path: str, pattern: str,
                 cancel: threading.Event | None = None) -> list[str]:
    root = resolve(settings, raw_path)
    if pattern == "":
        raise bad_request("query parameter 'pattern' is required (a glob such as *.py)")
    regex = glob_regex(pattern)
    found: list[str] = []
    root_name = os.path.basename(os.path.normpath(raw_path)) or raw_path
    with os_errors(raw_path):
        is_dir = stat.S_ISDIR(os.stat(root).st_mode)
        if regex.fullmatch(root_name):
            found.append(raw_path)
        if is_dir:
            for entry in walk(root, raw_path, cancel=cancel):
                if regex.fullmatch(entry.name):
                    found.append(entry.display)
    return found


def _replace_stream(source: Any, target: Any, old: bytes, new: bytes) -> int:
    """Copy `source` to `target` replacing every `old` (left to right, non-overlapping)."""
    count = 0
    keep = len(old) - 1
    carry = b""
    while True:
        chunk = source.read(_COPY_CHUNK)
        buffer = carry + chunk
        if not chunk:
            count += buffer.count(old)
            target.write(buffer.replace(old, new))
            return count
        # Occurrences starting at or after `cut` may continue in the next chunk.
        cut = len(buffer) - keep
        start = 0
        while True:
            hit = buffer.find(old, start)
            if hit == -1 or hit >= cut:
                break
            target.write(buffer[start:hit])
            target.write(new)
            count += 1
            start = hit + len(old)
        if start < cut:
            target.write(buffer[start:cut])
            carry = buffer[cut:]
        else:
            carry = buffer[start:]


def replace_in_file(path: Path, old: bytes, new: bytes) -> None:
    """Replace in place via a temp file beside `path`, renamed over it when complete."""
    path = Path(os.path.realpath(path))  # through symlinks: the link itself stays
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise IsADirectoryError(21, "not a regular file", str(path))
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.replace")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with open(path, "rb") as source, os.fdopen(fd, "wb", buffering=_COPY_CHUNK) as target:
            count = _replace_stream(source, target, old, new)
        if count == 0:
            os.unlink(temp)
            return
        os.chmod(temp, stat.S_IMODE(st.st_mode))
        try:
            os.chown(temp, st.st_uid, st.st_gid)
        except OSError:
            pass  # not root: the file becomes ours, like any rewrite would
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise


def replace_in_files(settings: Settings, files: list[str], pattern: str, new_value: str) -> list[dict[str, Any]]:
    if pattern == "":
        raise bad_request("invalid body request: pattern must not be empty")
    old = pattern.encode("utf-8", errors="surrogateescape")
    new = new_value.encode("utf-8", errors="surrogateescape")
    results: list[dict[str, Any]] = []
    for raw in files:
        try:
            replace_in_file(settings.resolve(check_path(raw)), old, new)
            results.append({"file": raw, "success": True})
        except DaemonError as exc:
            results.append({"file": raw, "success": False, "error": exc.message})
        except OSError as exc:
            results.append({"file": raw, "success": False, "error": from_os_error(exc, raw).message})
    return results
