"""Client paths: validated, resolved against the work dir, and walked in Go's order."""

from __future__ import annotations

import os
import posixpath
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from toolbox.config import Settings
from toolbox.errors import Code, DaemonError


def check_path(raw: str, what: str = "path") -> str:
    """`raw` if the OS can take it; a 400 naming the problem otherwise."""
    if raw == "":
        raise DaemonError(Code.BAD_REQUEST, f"{what} is required")
    if "\x00" in raw:
        raise DaemonError(Code.BAD_REQUEST, f"{what} contains a NUL byte: {raw!r}")
    try:
        os.fsencode(raw)
    except UnicodeEncodeError:
        raise DaemonError(Code.BAD_REQUEST, f"{what} is not valid UTF-8: {raw!r}") from None
    return raw


def resolve(settings: Settings, raw: str, what: str = "path") -> Path:
    """A client path made absolute (relative paths are relative to the work dir)."""
    return settings.resolve(check_path(raw, what))


def join_display(root: str, relative: str) -> str:
    """Go's `filepath.Join(root, relative)`: the client's own spelling, cleaned."""
    return posixpath.normpath(posixpath.join(root, relative)) if relative else root


class Cancelled(Exception):
    """The request a walk or grep worked for is gone (its client disconnected)."""


def check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled()


@dataclass(frozen=True)
class WalkEntry:
    path: Path  # absolute, for the OS
    display: str  # as the client should see it (prefixed with the root it gave)
    name: str
    is_dir: bool  # a real directory (symlinks are not followed)
    is_file: bool  # a regular file (symlinks are not followed)


def walk(root: Path, display_root: str, max_depth: int | None = None,
         cancel: threading.Event | None = None) -> Iterator[WalkEntry]:
    """Entries below `root` in `filepath.WalkDir` order: pre-order, names sorted bytewise.

    Symlinks are listed but never followed; unreadable subdirectories are skipped (the
    root itself must be readable: its error propagates). `max_depth` 1 means the root's
    own entries only. Setting `cancel` stops the walk at the next entry (raises Cancelled).
    """
    stack: list[tuple[Path, str, Iterator[os.DirEntry[str]], int]] = []

    def open_dir(path: Path, display: str, depth: int) -> None:
        with os.scandir(path) as scan:
            entries = sorted(scan, key=lambda e: os.fsencode(e.name))
        stack.append((path, display, iter(entries), depth))

    open_dir(root, display_root, 1)
    while stack:
        check_cancel(cancel)
        _, display, entries, depth = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        try:
            kind = stat.S_IFMT(entry.stat(follow_symlinks=False).st_mode)
        except OSError:
            continue
        item = WalkEntry(
            path=Path(entry.path),
            display=join_display(display, entry.name),
            name=entry.name,
            is_dir=kind == stat.S_IFDIR,
            is_file=kind == stat.S_IFREG,
        )
        yield item
        if item.is_dir and (max_depth is None or depth < max_depth):
            try:
                open_dir(item.path, item.display, depth + 1)
            except OSError:
                pass
