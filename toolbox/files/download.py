"""Downloads: one raw file (`/files/download`, with Range and ETag) and the multipart
stream of `/files/bulk-download`.

Both are plain ASGI responses that read the file in large pieces (one worker-thread call
per piece) so memory stays at a few MiB whatever the file size, and both stop reading as
soon as the client goes away.
"""

from __future__ import annotations

import json
import mimetypes
import os
import re
import secrets
import stat
from contextlib import aclosing
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from email.utils import format_datetime, parsedate_to_datetime
from datetime import datetime, timezone
from pathlib import Path

import anyio
from starlette.types import Receive, Scope, Send

from toolbox.disconnect import listen_for_http_disconnect
from toolbox.errors import Code, DaemonError, error_body, from_os_error

# Large reads are what makes Python serve files fast (architecture.md: 64 KiB reads give
# ~400 MiB/s, 1-4 MiB reads 1-2 GB/s); one piece in flight bounds the memory.
CHUNK = 4 * 1024 * 1024

# `filename*` keeps these bytes as they are and percent-encodes every other (RFC 5987).
_ATTR_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$&+-.^_`|~")


def encode_rfc5987(value: str) -> str:
    raw = value.encode("utf-8", errors="surrogatepass")
    return "".join(chr(b) if b in _ATTR_CHARS else f"%{b:02X}" for b in raw)


def quote_latin1(value: str) -> str:
    """The quoted `filename=` fallback: `\\` and `"` escaped, CR/LF/NUL dropped, others `_`."""
    out = []
    for ch in value:
        if ch in "\r\n\x00":
            continue
        if ch in '\\"':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F or ord(ch) > 0xFF:
            out.append("_")
        else:
            out.append(ch)
    return "".join(out)


def disposition(kind: str, filename: str, name: str | None = None) -> str:
    params = f'; name="{name}"' if name else ""
    return f"{kind}{params}; filename=\"{quote_latin1(filename)}\"; filename*=utf-8''{encode_rfc5987(filename)}"


def etag_of(st: os.stat_result) -> str:
    """A validator that changes whenever the file is replaced, rewritten or resized."""
    return f'"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"'


async def stream_until_disconnect(receive: Receive, body: Callable[[], Awaitable[None]]) -> None:
    """Run `body` (which sends the response) but stop it when the client disconnects.

    uvicorn's `send` silently drops data once the peer is gone (ASGI spec 2.3), so without
    this a cancelled 10 GiB download would be read to the end for nobody.
    """
    async with anyio.create_task_group() as group:

        async def watch() -> None:
            await listen_for_http_disconnect(receive)
            group.cancel_scope.cancel()

        group.start_soon(watch)
        await body()
        group.cancel_scope.cancel()


# O_NONBLOCK: opening a FIFO must not hang a worker thread (it is refused right after).
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK


def _read(fd: int, size: int, offset: int) -> bytes:
    return os.pread(fd, size, offset)


# -- single file --------------------------------------------------------------------------


@dataclass
class ByteRange:
    start: int
    end: int  # inclusive


_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE | re.ASCII)  # ASCII: not "١"


def parse_range(header: str, size: int) -> ByteRange | None:
    """The single byte range asked for; None to serve the whole file (absent, malformed or
    multi-range headers may be ignored per RFC 9110). Raises 416 if unsatisfiable."""
    match = _RANGE.match(header)
    if not match:
        return None
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise _unsatisfiable(header, size)
        return ByteRange(max(0, size - suffix), size - 1)
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None  # syntactically invalid: ignored
    if start >= size:
        raise _unsatisfiable(header, size)
    return ByteRange(start, min(end, size - 1))


class RangeNotSatisfiable(DaemonError):
    """416, answered with `Content-Range: bytes */<size>` so the client learns the size."""

    def __init__(self, header: str, size: int) -> None:
        super().__init__(
            Code.BAD_REQUEST, f"range not satisfiable: {header.strip()!r} for a file of {size} bytes", status=416
        )
        self.size = size


def _unsatisfiable(header: str, size: int) -> RangeNotSatisfiable:
    return RangeNotSatisfiable(header, size)


def _etag_matches(header: str, etag: str) -> bool:
    """Weak comparison, as If-None-Match requires."""
    if header.strip() == "*":
        return True
    bare = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == bare for tag in header.split(","))


def _not_modified_since(header: str, st: os.stat_result) -> bool:
    try:
        since = parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return False
    if since.tzinfo is None:
        since = since.replace(tzinfo=timezone.utc)
    return int(st.st_mtime) <= since.timestamp()


class FileDownload:
    """ASGI response for an open file descriptor: 200, 206, 304 or 416."""

    def __init__(self, fd: int, st: os.stat_result, name: str, request_headers: dict[str, str]) -> None:
        self.fd = fd
        self.size = st.st_size
        self.status = 200
        self.start, self.length = 0, st.st_size
        etag = etag_of(st)
        last_modified = format_datetime(datetime.fromtimestamp(int(st.st_mtime), timezone.utc), usegmt=True)
        self.headers: list[tuple[str, str]] = [
            ("content-type", "application/octet-stream"),
            ("content-disposition", disposition("attachment", name)),
            ("content-description", "File Transfer"),
            ("content-transfer-encoding", "binary"),
            ("expires", "0"),
            ("cache-control", "must-revalidate"),
            ("pragma", "public"),
            ("accept-ranges", "bytes"),
            ("etag", etag),
            ("last-modified", last_modified),
        ]
        if_none_match = request_headers.get("if-none-match")
        if if_none_match is not None:
            not_modified = _etag_matches(if_none_match, etag)
        else:
            since = request_headers.get("if-modified-since")
            not_modified = since is not None and _not_modified_since(since, st)
        if not_modified:
            self.status, self.length = 304, 0
            self.headers = [(k, v) for k, v in self.headers if k in ("etag", "last-modified", "cache-control", "expires")]
            return
        range_header = request_headers.get("range")
        if_range = request_headers.get("if-range")
        if range_header and (if_range is None or if_range.strip() in (etag, last_modified)):
            wanted = parse_range(range_header, self.size)
            if wanted is not None:
                self.status = 206
                self.start, self.length = wanted.start, wanted.end - wanted.start + 1
                self.headers.append(("content-range", f"bytes {wanted.start}-{wanted.end}/{self.size}"))
        if self.status != 304:
            self.headers.append(("content-length", str(self.length)))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status,
                    "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self.headers],
                }
            )
            if scope.get("method") == "HEAD" or self.length == 0:
                await send({"type": "http.response.body", "body": b""})
                return
            await stream_until_disconnect(receive, self._send_body(send))
        finally:
            os.close(self.fd)

    def _send_body(self, send: Send) -> Callable[[], Awaitable[None]]:
        async def body() -> None:
            offset, remaining = self.start, self.length
            while remaining > 0:
                piece = await anyio.to_thread.run_sync(_read, self.fd, min(CHUNK, remaining), offset)
                if not piece:
                    # The file shrank under us: end the connection short rather than lie.
                    raise RuntimeError(f"file shrank while being sent ({remaining} bytes missing)")
                offset += len(piece)
                remaining -= len(piece)
                await send({"type": "http.response.body", "body": piece, "more_body": remaining > 0})

        return body


def open_for_download(path: Path, display: str) -> tuple[int, os.stat_result]:
    """Open a regular file for reading; 404/403/400 for what is not one."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except IsADirectoryError:
        raise DaemonError(Code.BAD_REQUEST, f"path must be a file, not a directory: {display}") from None
    except OSError as exc:
        raise from_os_error(exc, display) from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        what = "a directory" if stat.S_ISDIR(st.st_mode) else "a device, pipe or socket"
        raise DaemonError(Code.BAD_REQUEST, f"path must be a file, not {what}: {display}")
    return fd, st


# -- bulk download --------------------------------------------------------------------------


@dataclass
class OpenedPart:
    """A file opened for a multipart part, with its first piece already read."""

    fd: int
    size: int
    first: bytes


def _error_part(boundary_line: bytes, raw_path: str, status: int, code: Code, message: str) -> bytes:
    body = error_body(status, message, code, raw_path, "POST")
    head = (
        "Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Disposition: {disposition('form-data', raw_path, name='error')}\r\n\r\n"
    )
    return boundary_line + head.encode("latin-1") + json.dumps(body).encode("utf-8")


def _open_part(resolve: Callable[[str], Path], raw_path: str) -> OpenedPart | tuple[int, Code, str]:
    """Open one requested file, or say which error part to send instead."""
    if raw_path == "" or "\x00" in raw_path:
        return 400, Code.INVALID_FILE_PATH, f"invalid file path: {raw_path!r}"
    try:
        path = resolve(raw_path)
        fd = os.open(path, _OPEN_FLAGS)
    except DaemonError as exc:
        return 400, Code.INVALID_FILE_PATH, exc.message
    except (UnicodeEncodeError, ValueError):
        return 400, Code.INVALID_FILE_PATH, f"invalid file path: {raw_path!r}"
    except IsADirectoryError:
        return 400, Code.INVALID_FILE_PATH, f"path is a directory: {raw_path}"
    except OSError as exc:
        error = from_os_error(exc, raw_path)
        if error.code in (Code.FILE_NOT_FOUND, Code.FILE_ACCESS_DENIED):
            return error.status, error.code, error.message
        if error.status == 400:
            return 400, Code.INVALID_FILE_PATH, error.message
        return 500, Code.FILE_READ_FAILED, f"failed to open {raw_path}: {exc.strerror or exc}"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            return 400, Code.INVALID_FILE_PATH, f"path is {what}: {raw_path}"
        first = os.pread(fd, min(CHUNK, st.st_size), 0) if st.st_size else b""
    except OSError as exc:
        os.close(fd)
        return 500, Code.FILE_READ_FAILED, f"failed to read {raw_path}: {exc.strerror or exc}"
    return OpenedPart(fd, st.st_size, first)


def _content_type(raw_path: str) -> str:
    guessed, _ = mimetypes.guess_type(raw_path, strict=False)
    return guessed or "application/octet-stream"


class BulkDownload:
    """ASGI response: one multipart part per requested path, in request order, then the
    closing boundary. A file that cannot be read in full ends the stream without the
    closing boundary, so the SDK reports truncation rather than a short file."""

    def __init__(self, paths: list[str], resolve: Callable[[str], Path]) -> None:
        self.paths = paths
        self.resolve = resolve
        self.boundary = f"DAYTONA-FILE-BOUNDARY-{secrets.token_hex(12)}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        content_type = f"multipart/form-data; boundary={self.boundary}"
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", content_type.encode("latin-1"))],
            }
        )

        async def body() -> None:
            # aclosing: a disconnect while `send` waits must still close the open file.
            async with aclosing(self._pieces()) as pieces:
                async for piece in pieces:
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

        await stream_until_disconnect(receive, body)

    async def _pieces(self) -> AsyncGenerator[bytes, None]:
        delimiter = f"--{self.boundary}\r\n".encode()
        for index, raw_path in enumerate(self.paths):
            boundary_line = delimiter if index == 0 else b"\r\n" + delimiter
            opened = await anyio.to_thread.run_sync(_open_part, self.resolve, raw_path)
            if not isinstance(opened, OpenedPart):
                status, code, message = opened
                yield _error_part(boundary_line, raw_path, status, code, message)
                continue
            try:
                head = (
                    f"Content-Disposition: {disposition('form-data', raw_path, name='file')}\r\n"
                    f"Content-Length: {opened.size}\r\n"
                    f"Content-Type: {_content_type(raw_path)}\r\n\r\n"
                )
                yield boundary_line + head.encode("latin-1") + opened.first
                offset = len(opened.first)
                while offset < opened.size:
                    piece = await anyio.to_thread.run_sync(_read, opened.fd, min(CHUNK, opened.size - offset), offset)
                    if not piece:
                        raise RuntimeError(f"{raw_path} shrank while being sent")
                    offset += len(piece)
                    yield piece
            finally:
                os.close(opened.fd)
        yield f"\r\n--{self.boundary}--\r\n".encode()
