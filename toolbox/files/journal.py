"""Temp files of uploads in flight, listed so that a daemon killed mid-upload cleans up.

An upload is written to a hidden temp file beside its destination (the final rename must
stay on one filesystem), so a daemon killed mid-upload leaves `.name.<hex>.upload` files
anywhere in the sandbox. Each temp path is appended to `<state_dir>/uploads-in-flight`
when created (one O_APPEND write, NUL-separated: paths cannot contain NUL). At start the
daemon removes every listed file that still exists and matches the temp-name pattern
(finished uploads were renamed away, abandoned ones removed), then empties the list. The
list is emptied again whenever no upload is in flight, so it stays small.
"""

from __future__ import annotations

import os
import re
import stat
import threading
from pathlib import Path

_TEMP_NAME = re.compile(rb"^\..+\.[0-9a-f]{12}\.upload$", re.DOTALL)


class UploadJournal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()  # uploads open and close temp files in worker threads
        self._in_flight = 0
        self._fd: int | None = None

    def sweep(self) -> int:
        """Remove the temp files a previous daemon left; returns how many were removed."""
        try:
            listed = self.path.read_bytes()
        except FileNotFoundError:
            return 0
        removed = 0
        for raw in filter(None, listed.split(b"\0")):
            if not _TEMP_NAME.match(os.path.basename(raw)):
                continue
            try:
                if stat.S_ISREG(os.lstat(raw).st_mode):
                    os.unlink(raw)
                    removed += 1
            except OSError:
                pass
        self.path.unlink(missing_ok=True)
        return removed

    def opened(self, temp: Path) -> bool:
        """List `temp`; False if the journal cannot be written (the upload goes on unlisted)."""
        with self._lock:
            try:
                if self._fd is None:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
                os.write(self._fd, os.fsencode(temp) + b"\0")
            except OSError:
                return False
            self._in_flight += 1
            return True

    def closed(self) -> None:
        with self._lock:
            self._in_flight -= 1
            if self._in_flight == 0 and self._fd is not None:
                try:
                    os.ftruncate(self._fd, 0)
                except OSError:
                    pass
