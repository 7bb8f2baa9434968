"""A lean HTTP/1.1 client for the forwarding hot path: asyncio Protocol + httptools parser.

aiohttp's client costs ~100 us of Python per request; a relay needs far less (write one
header block, parse with httptools, hand chunks on). This pool keeps idle keep-alive
connections per target (LIFO), streams bodies both ways with backpressure, and reports a
connection that dies before answering so an idempotent request can be retried on a fresh
one. WebSockets are spliced as raw bytes after their handshake (`splice.py`).
"""

from __future__ import annotations

import asyncio
import collections
import errno
import os
import stat
import time
from collections.abc import Callable
from typing import TypeVar

import httptools

# Response bodies: pause reading the upstream above this much not yet sent on. Per slow
# client the proxy holds about this plus one read and what its transport buffers.
_READ_HIGH_WATER = 256 << 10
# Uploads: let a few reads' worth queue up before making the client wait (the 64 KiB
# default turns every upload into a pause/resume ping-pong).
_HIGH_WATER = 1 << 20
_LOW_WATER = 256 << 10


class UpstreamConnection(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.lost = False
        self.error: BaseException | None = None
        self.reused = False
        self.idle_since = 0.0
        self._drain: asyncio.Future[None] | None = None
        self._write_paused = False
        self.reset()

    def reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done: asyncio.Future[None] = self.loop.create_future()
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.complete = False
        self.keep_alive = False
        self.framed = True  # False: the body ends when the connection closes
        self.head_request = False
        self._informational = False
        self._read_paused = False
        self._waiter: asyncio.Future[None] | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=_HIGH_WATER, low=_LOW_WATER)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"invalid HTTP response from the upstream: {exc}"))
            self.close()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.headers_done.done() and not self.complete and not self.framed:
            self.complete = True  # a close-delimited body ended normally
            self._wake()
        else:
            self._fail(exc or ConnectionResetError("the upstream closed the connection"))
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(ConnectionResetError("the upstream closed the connection"))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # -- httptools callbacks --------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._informational = True  # 100 Continue, 103 Early Hints: wait for the real answer
            self.headers = []
            return
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        self.framed = status in (204, 304) or self.head_request or any(
            k.lower() in (b"content-length", b"transfer-encoding") for k, _ in self.headers)
        if self.head_request:
            self.complete = True
            self.keep_alive = False  # the parser would wait for a body that never comes
        if not self.headers_done.done():
            self.headers_done.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _READ_HIGH_WATER and not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        self.complete = True
        self._wake()

    # -- helpers --------------------------------------------------------------------------
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        if not self.headers_done.done():
            self.headers_done.set_exception(exc)
            self.headers_done.exception()  # retrieved by whoever awaits it
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def write_chunk(self, data: bytes) -> None:
        """One chunk of a chunked body, framed without copying the data."""
        assert self.transport is not None
        self.transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))

    async def drain(self) -> None:
        if self.lost:
            raise ConnectionResetError("the upstream closed the connection")
        if self._write_paused:
            self._drain = self.loop.create_future()
            await self._drain

    def take(self) -> bytes:
        """Everything buffered so far (possibly b"")."""
        if not self.chunks:
            return b""
        data = self.chunks.popleft() if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks.clear()
        self.buffered = 0
        if self._read_paused and self.transport is not None:
            self._read_paused = False
            self.transport.resume_reading()
        return data

    async def next_chunk(self) -> bytes | None:
        """The next body bytes, None at the end; raises if the connection broke."""
        while True:
            if self.chunks:
                return self.take()
            if self.complete:
                return None
            if self.error is not None:
                raise self.error
            self._waiter = self.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.lost and self.error is None and not self.chunks


P = TypeVar("P", bound=asyncio.Protocol)


def _open_socket_file(path: str) -> int:
    """An O_PATH descriptor of the socket at `path`, never following a symlink there.

    A sandbox can write the directory its daemon's socket lives in: a symlink put in its
    place (to the control plane's socket, a container engine's, any host socket) must not
    be followed by the host side. Connecting through /proc/self/fd/N then reaches exactly
    the inode checked here."""
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"{path} is not a socket (a symlink or another file)")
    except BaseException:
        os.close(fd)
        raise
    return fd


async def open_connection(factory: Callable[[], P], unix_path: str | None, host: str, port: int) -> P:
    """Connect to a Unix socket (never through a symlink), or to host:port; `localhost` is
    tried as IPv4 then IPv6, without a resolver round trip."""
    loop = asyncio.get_running_loop()
    if unix_path is not None:
        fd = _open_socket_file(unix_path)
        try:
            _, protocol = await loop.create_unix_connection(factory, f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return protocol
    last: OSError | None = None
    for candidate in ("127.0.0.1", "::1") if host == "localhost" else (host,):
        try:
            _, protocol = await loop.create_connection(factory, candidate, port)
            return protocol
        except OSError as exc:
            last = exc
    assert last is not None
    raise last


class ConnectionPool:
    """Idle keep-alive connections per (host, port), or to one Unix socket.

    A connection idle for `keepalive` seconds is closed: on the next acquire for its
    target, or by one sweep timer per pool (armed while anything is idle, every
    keepalive/2 seconds), so an idle socket to a target nobody calls again lives at most
    1.5 x keepalive. One timer per pool, not per connection: the hot path only checks
    whether it is armed.
    """

    def __init__(self, *, unix_path: str | None = None, keepalive: float = 30.0, max_idle: int = 256) -> None:
        self.unix_path = unix_path
        self.keepalive = keepalive
        self.max_idle = max_idle
        self._idle: dict[tuple[str, int], list[UpstreamConnection]] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    async def acquire(self, host: str, port: int) -> UpstreamConnection:
        idle = self._idle.get((host, port))
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            # Anything that arrived while idle (an unsolicited response) would desync it.
            unsolicited = conn.headers_done.done() or conn.chunks or conn.error is not None
            if not conn.lost and not unsolicited and now - conn.idle_since < self.keepalive:
                conn.reused = True
                return conn
            conn.close()
        return await self._connect(host, port)

    async def _connect(self, host: str, port: int) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        return await open_connection(lambda: UpstreamConnection(loop), self.unix_path, host, port)

    def release(self, conn: UpstreamConnection, host: str, port: int) -> None:
        if not conn.reusable:
            conn.close()
            return
        idle = self._idle.setdefault((host, port), [])
        if len(idle) >= self.max_idle:
            conn.close()
            return
        conn.reset()
        conn.idle_since = time.monotonic()
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = conn.loop.call_later(self.keepalive / 2, self._sweep, conn.loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close connections idle too long (or closed by the upstream); re-arm while any remain."""
        self._sweeper = None
        expired = time.monotonic() - self.keepalive
        for key, idle in list(self._idle.items()):
            fresh = [conn for conn in idle if not conn.lost and conn.idle_since > expired]
            if len(fresh) < len(idle):
                for conn in idle:
                    if conn.lost or conn.idle_since <= expired:
                        conn.close()
                idle[:] = fresh
            if not idle:
                del self._idle[key]  # targets nobody calls any more are forgotten too
        if self._idle:
            self._sweeper = loop.call_later(self.keepalive / 2, self._sweep, loop)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
