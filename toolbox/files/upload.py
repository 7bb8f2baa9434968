"""Uploads: files are written beside their destination and renamed into place when complete.

`PendingFile` is one file in flight (hidden temp name, `O_EXCL`, no fsync). The
`MultipartUpload` receiver is driven by python-multipart's streaming parser; it is fed
the request body in ~1 MiB batches, each in one worker-thread call, so parsing and disk
writes never run on the event loop and a part is never held in memory.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from toolbox.errors import Code, DaemonError, from_os_error
from toolbox.files.journal import UploadJournal

# Path parts are short text; anything bigger is not a path.
_MAX_TEXT_PART = 64 * 1024
_MAX_PART_HEADERS = 16 * 1024


class PendingFile:
    """A new version of `destination`, invisible until `commit()` renames it into place."""

    def __init__(self, destination: Path, journal: UploadJournal | None = None) -> None:
        if destination.is_symlink():
            # Writing to a symlink updates its target (as open(2) would); the link stays.
            destination = Path(os.path.realpath(destination))
        self.destination = destination
        self.size = 0
        parent = destination.parent
        os.makedirs(parent, 0o755, exist_ok=True)
        if destination.is_dir():
            raise IsADirectoryError(errno.EISDIR, "destination is a directory", str(destination))
        self.temp = parent / f".{destination.name}.{secrets.token_hex(6)}.upload"
        self.fd: int | None = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        # Listed so that a daemon killed mid-upload removes the temp file at its next start.
        self._journal = journal if journal is not None and journal.opened(self.temp) else None

    def write(self, data: bytes | memoryview) -> None:
        assert self.fd is not None
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]
        self.size += len(data)

    def commit(self) -> None:
        assert self.fd is not None
        try:
            # An overwrite keeps the old file's mode and (when we may) its owner.
            old = os.stat(self.destination)
        except OSError:
            old = None
        if old is not None:
            os.fchmod(self.fd, stat.S_IMODE(old.st_mode))
            try:
                os.fchown(self.fd, old.st_uid, old.st_gid)
            except OSError:
                pass
        fd, self.fd = self.fd, None
        os.close(fd)
        try:
            os.rename(self.temp, self.destination)
        except OSError:
            self._remove_temp()
            raise
        self._unlist()

    def abort(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)
        self._remove_temp()

    def _remove_temp(self) -> None:
        try:
            os.unlink(self.temp)
        except OSError:
            pass
        self._unlist()

    def _unlist(self) -> None:
        if self._journal is not None:
            journal, self._journal = self._journal, None
            journal.closed()


def upload_error(exc: OSError, display: str) -> DaemonError:
    error = from_os_error(exc, display)
    if error.code == Code.CONFLICT:
        error = DaemonError(Code.BAD_REQUEST, f"cannot create {display}: a parent path is not a directory")
    return error


@contextmanager
def upload_errors(display: str) -> Iterator[None]:
    """`os_errors` for an upload to `display`: a parent that is a file is a 400, not a 409."""
    try:
        yield
    except OSError as exc:
        raise upload_error(exc, display) from exc


_FIELD = re.compile(r"^files\[(\d+)\]\.(path|file)$")


@dataclass
class _Part:
    headers: dict[str, str] = field(default_factory=dict)
    kind: str = "skip"  # "path" | "file" | "skip"
    index: int = -1
    text: bytearray = field(default_factory=bytearray)
    target: PendingFile | None = None
    display: str = ""


class MultipartUpload:
    """Receives `multipart/form-data` uploads part by part.

    In bulk mode (`fixed is None`) parts are `files[i].path` (text) followed by
    `files[i].file`; with `fixed` set (upload-v2), the part named `file` goes to `fixed`.
    Each file is committed when its part ends; errors are collected per file.
    """

    def __init__(self, boundary: bytes, resolve: Callable[[str], Path], fixed: tuple[Path, str] | None = None,
                 journal: UploadJournal | None = None) -> None:
        self.resolve = resolve
        self.fixed = fixed
        self.journal = journal
        self.paths: dict[int, str] = {}
        self.files: list[dict[str, Any]] = []
        self.failures: list[DaemonError] = []
        self.part = _Part()
        self._field = bytearray()
        self._value = bytearray()
        self._header_bytes = 0
        self.parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
            },
        )

    # -- driving (worker thread) -------------------------------------------------------

    def feed(self, data: bytes) -> None:
        try:
            self.parser.write(data)
        except MultipartParseError as exc:
            self.abort()
            raise DaemonError(Code.BAD_REQUEST, f"invalid multipart form: {exc}") from None

    def finish(self, data: bytes) -> None:
        if data:
            self.feed(data)
        self.parser.finalize()
        if self.parser.state != MultipartState.END:
            incomplete = self.part.target.destination if self.part.target else None
            self.abort()
            where = f" (while receiving {self.part.display})" if incomplete else ""
            self._error(f"multipart body ended before its closing boundary{where}")

    def abort(self) -> None:
        if self.part.target is not None:
            self.part.target.abort()
            self.part.target = None

    # -- parser callbacks --------------------------------------------------------------

    def _error(self, message: str) -> None:
        self.failures.append(DaemonError(Code.BAD_REQUEST, message))

    def _os_error(self, exc: OSError, display: str) -> None:
        self.failures.append(upload_error(exc, display))

    def _on_part_begin(self) -> None:
        self.part = _Part()
        self._header_bytes = 0

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_bytes += end - start
        if self._header_bytes <= _MAX_PART_HEADERS:
            self._field.extend(data[start:end])

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_bytes += end - start
        if self._header_bytes <= _MAX_PART_HEADERS:
            self._value.extend(data[start:end])

    def _on_header_end(self) -> None:
        name = self._field.decode("latin-1").strip().lower()
        self.part.headers[name] = self._value.decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _on_headers_finished(self) -> None:
        part = self.part
        if self._header_bytes > _MAX_PART_HEADERS:
            self._error(f"a part's headers are larger than {_MAX_PART_HEADERS} bytes")
            return
        _, params = parse_options_header(part.headers.get("content-disposition", ""))
        name = params.get(b"name", b"").decode("utf-8", errors="replace")
        if self.fixed is not None:
            if name == "file":
                path, part.display = self.fixed
                self._open(path)
            return
        match = _FIELD.match(name)
        if match is None:
            return  # unknown fields are ignored
        part.index = int(match.group(1))
        if match.group(2) == "path":
            part.kind = "path"
            return
        raw = self.paths.get(part.index)
        if raw is None:
            self._error(f"file[{part.index}]: missing .path metadata (send files[{part.index}].path before the file)")
            return
        part.display = raw
        try:
            path = self.resolve(raw)
        except DaemonError as exc:
            self._error(f"files[{part.index}].path: {exc.message}")
            return
        self._open(path)

    def _open(self, path: Path) -> None:
        try:
            self.part.target = PendingFile(path, self.journal)
            self.part.kind = "file"
        except OSError as exc:
            self._os_error(exc, self.part.display)

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self.part
        if part.kind == "file" and part.target is not None:
            try:
                part.target.write(memoryview(data)[start:end])
            except OSError as exc:
                part.target.abort()
                part.target = None
                part.kind = "skip"
                self._os_error(exc, part.display)
        elif part.kind == "path":
            if len(part.text) + (end - start) > _MAX_TEXT_PART:
                self._error(f"files[{part.index}].path is longer than {_MAX_TEXT_PART} bytes")
                part.kind = "skip"
            else:
                part.text.extend(data[start:end])

    def _on_part_end(self) -> None:
        part = self.part
        if part.kind == "path":
            try:
                value = part.text.decode("utf-8").strip()
            except UnicodeDecodeError:
                self._error(f"files[{part.index}].path is not valid UTF-8")
                return
            if not value:
                self._error(f"files[{part.index}].path is empty")
                return
            self.paths[part.index] = value
        elif part.kind == "file" and part.target is not None:
            target, part.target = part.target, None
            try:
                target.commit()
            except OSError as exc:
                self._os_error(exc, part.display)
                return
            self.files.append({"path": part.display, "bytes": target.size})
