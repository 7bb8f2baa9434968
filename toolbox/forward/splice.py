"""Relay a WebSocket as raw bytes once the upstream has answered the handshake.

After a 101 both directions are plain byte streams, and both ends already speak
WebSocket to each other: the client's Sec-WebSocket-Key reaches the upstream, whose
Sec-WebSocket-Accept, subprotocol and extensions reach the client unchanged. So a hop
need not parse, unmask and re-frame every message (uvicorn -> ASGI -> aiohttp cost
about 100 µs per echo per hop): it copies bytes transport to transport, with flow control
both ways, in constant memory whatever the message sizes.

It still knows where frames begin. `FrameCursor` reads only the 2-14 header bytes of each
frame and skips the payload, so that a server shutting down can end both sides with a
clean 1012 close frame instead of cutting a frame in half.

The server side of this lives in `wsserver.py` (uvicorn's WebSocket protocol, which hands
its transport over) and `Relay.websocket`, which opens the upstream with `open_upgrade`.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable

from toolbox.forward.pool import open_connection
from toolbox.options import env_float

# The ASGI scope extension (and send message type) offered by `wsserver.py`.
SPLICE = "toolbox.websocket.splice"
HANDSHAKE_TIMEOUT = env_float("TOOLBOX_WS_HANDSHAKE_TIMEOUT", 30.0)
MAX_RESPONSE_HEAD = 65536
GOING_AWAY = 1012  # "service restart": clients reconnect
# Once one side has gone, bytes still buffered for the other get this long to drain
# (a final message and close frame) before that side is cut: it may have stopped reading.
LINGER = 5.0
# A direction held back this long by a peer that reads nothing is cut, like nginx's
# proxy_send_timeout: a paused transport cannot even see that its peer has gone.
STALL_TIMEOUT = env_float("TOOLBOX_WS_STALL_TIMEOUT", 60.0)
# A WebSocket quiet this long gets an unsolicited pong toward the client (RFC 6455 §5.5.3:
# a heartbeat that expects no answer), as uvicorn's pings did before splicing: load
# balancers and NATs on the way cut idle connections, often after 60 s.
HEARTBEAT = env_float("TOOLBOX_WS_HEARTBEAT", 20.0)
_HEARTBEAT_FRAME = b"\x8a\x00"

Headers = list[tuple[bytes, bytes]]


class FrameCursor:
    """Tracks where the next frame starts in one direction of a WebSocket byte stream."""

    __slots__ = ("_skip", "_partial")

    def __init__(self) -> None:
        self._skip = 0  # payload bytes of the current frame still to come
        self._partial = b""  # a frame header split across reads

    @property
    def at_boundary(self) -> bool:
        return self._skip == 0 and not self._partial

    def feed(self, data: bytes) -> None:
        size = len(data)
        if self._skip >= size:
            self._skip -= size
            return
        pos = self._skip
        if self._partial:  # only ever set with _skip == 0
            data = self._partial + data
            size = len(data)
            self._partial = b""
        while pos < size:
            if size - pos < 2:
                self._partial = data[pos:]
                self._skip = 0
                return
            second = data[pos + 1]
            length = second & 0x7F
            header = 2 + (2 if length == 126 else 8 if length == 127 else 0) + (4 if second & 0x80 else 0)
            if size - pos < header:
                self._partial = data[pos:]
                self._skip = 0
                return
            if length == 126:
                length = int.from_bytes(data[pos + 2:pos + 4], "big")
            elif length == 127:
                length = int.from_bytes(data[pos + 2:pos + 10], "big")
            pos += header + length
        self._skip = pos - size


def close_frame(code: int, *, masked: bool) -> bytes:
    """A close frame with no reason; clients must mask theirs (RFC 6455 §5.3)."""
    payload = code.to_bytes(2, "big")
    if not masked:
        return bytes((0x88, len(payload))) + payload
    key = os.urandom(4)
    return bytes((0x88, 0x80 | len(payload))) + key + bytes(b ^ key[i] for i, b in enumerate(payload))


class UpstreamRejected(Exception):
    """The upstream answered a WebSocket handshake with a non-101 status."""

    def __init__(self, status: int, headers: Headers) -> None:
        super().__init__(f"upstream answered {status}")
        self.status = status
        self.headers = headers


class UpstreamSide(asyncio.Protocol):
    """The connection to the upstream: first the handshake answer, then the splice."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.answer: asyncio.Future[tuple[int, bytes, Headers]] = loop.create_future()
        self.splice: Splice | None = None
        self._head = b""
        self.early = b""  # frames the upstream sent right behind its 101

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.splice is not None:
            self.splice.from_upstream(data)
            return
        if self.answer.done():  # nobody reads before the splice starts: stop until it does
            self.early += data
            return
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > MAX_RESPONSE_HEAD:
                self.answer.set_exception(ConnectionError("the upstream's handshake answer is too large"))
            return
        head, self.early = self._head[:end], self._head[end + 4:]
        self._head = b""
        try:
            status_line, *lines = head.split(b"\r\n")
            status = int(status_line.split(b" ", 2)[1])
            headers = [(name.strip().lower(), value.strip())
                       for name, _, value in (line.partition(b":") for line in lines)]
        except (ValueError, IndexError):
            self.answer.set_exception(ConnectionError("the upstream's handshake answer is not HTTP"))
            return
        self.transport.pause_reading()  # type: ignore[union-attr]  # until the splice starts
        self.answer.set_result((status, status_line, headers))

    def eof_received(self) -> bool | None:
        return None  # close: a WebSocket has no use for half-closed connections

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(ConnectionError("the upstream closed the connection during the handshake"))
        if self.splice is not None:
            self.splice.upstream_lost()

    def pause_writing(self) -> None:
        if self.splice is not None:
            self.splice.upstream_paused()

    def resume_writing(self) -> None:
        if self.splice is not None:
            self.splice.upstream_resumed()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def open_upgrade(
    *, unix_path: str | None, host: str, port: int, head: bytes, retry_delays: tuple[float, ...] = (),
    peer_uid: int | None = None,
) -> tuple[UpstreamSide, bytes, Headers]:
    """Connect, send the upgrade request `head`, wait for a 101.

    Returns the connection, the status line and the response headers. Raises OSError
    when nothing listens (after the `retry_delays`), ConnectionError when the upstream
    hangs up, TimeoutError when it does not answer within HANDSHAKE_TIMEOUT, UpstreamRejected
    for a non-101.
    """
    loop = asyncio.get_running_loop()
    attempt = 0
    while True:
        try:
            upstream = await open_connection(lambda: UpstreamSide(loop), unix_path, host, port, peer_uid)
            break
        except socket.gaierror:
            raise
        except OSError:  # refused: the app may be starting
            if attempt >= len(retry_delays):
                raise
            await asyncio.sleep(retry_delays[attempt])
            attempt += 1
    try:
        assert upstream.transport is not None
        upstream.transport.write(head)
        try:
            status, status_line, headers = await asyncio.wait_for(asyncio.shield(upstream.answer), HANDSHAKE_TIMEOUT)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no answer to the WebSocket handshake within {HANDSHAKE_TIMEOUT:g} s") from None
        if status != 101:
            raise UpstreamRejected(status, headers)
    except BaseException:
        upstream.abort()
        raise
    return upstream, status_line, headers


class Splice:
    """Copies bytes between the client's transport and the upstream's until both close."""

    def __init__(self, upstream: UpstreamSide, on_traffic: Callable[[], None] | None = None) -> None:
        self.client: asyncio.Transport = None  # type: ignore[assignment]  # set by start()
        self.upstream = upstream
        self.on_traffic = on_traffic
        self.to_client = FrameCursor()
        self.to_upstream = FrameCursor()
        self.done: asyncio.Future[None] = upstream.loop.create_future()
        self._client_open = True
        self._upstream_open = True
        self._stopping = False
        self._linger: asyncio.TimerHandle | None = None
        self._held = 0  # directions paused because the receiving side is not reading
        self._stall: asyncio.TimerHandle | None = None
        self._chunks = 0  # chunks relayed either way, for the heartbeat
        self._chunks_seen = 0
        self._beat: asyncio.TimerHandle | None = None

    def start(self, client: asyncio.Transport, response_head: bytes) -> None:
        """Answer the client with the upstream's 101 and start copying (by the server protocol)."""
        self.client = client
        client.write(response_head)
        upstream = self.upstream
        upstream.splice = self
        if upstream.early:
            early, upstream.early = upstream.early, b""
            self.from_upstream(early)
        if upstream.transport is None or upstream.transport.is_closing():
            self.upstream_lost()
        else:
            upstream.transport.resume_reading()
            if HEARTBEAT > 0:
                self._beat = upstream.loop.call_later(HEARTBEAT, self._heartbeat)

    def refuse(self) -> None:
        """The client left before the splice could start."""
        self.upstream.abort()
        if not self.done.done():
            self.done.set_result(None)

    # -- bytes ----------------------------------------------------------------------------
    def from_client(self, data: bytes) -> None:
        if self._stopping or not self._upstream_open:
            return
        self.to_upstream.feed(data)
        self.upstream.transport.write(data)  # type: ignore[union-attr]
        self._chunks += 1
        if self.on_traffic is not None:
            self.on_traffic()

    def from_upstream(self, data: bytes) -> None:
        if self._stopping or not self._client_open:
            return
        self.to_client.feed(data)
        self.client.write(data)
        self._chunks += 1
        if self.on_traffic is not None:
            self.on_traffic()

    # -- flow control: a slow reader on one side pauses reading on the other ---------------
    def client_paused(self) -> None:
        if self.upstream.transport is not None:
            self.upstream.transport.pause_reading()
        self._hold()

    def client_resumed(self) -> None:
        if self.upstream.transport is not None and not self.upstream.transport.is_closing():
            self.upstream.transport.resume_reading()
        self._release()

    def upstream_paused(self) -> None:
        self.client.pause_reading()
        self._hold()

    def upstream_resumed(self) -> None:
        if not self.client.is_closing():
            self.client.resume_reading()
        self._release()

    def _hold(self) -> None:
        self._held += 1
        if self._stall is None:
            self._stall = self.upstream.loop.call_later(STALL_TIMEOUT, self.abort)

    def _release(self) -> None:
        self._held -= 1
        if self._held <= 0 and self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def _heartbeat(self) -> None:
        self._beat = None
        if self._stopping or not (self._client_open and self._upstream_open):
            return
        if self._chunks == self._chunks_seen and self._held == 0 and self.to_client.at_boundary:
            self.client.write(_HEARTBEAT_FRAME)
        self._chunks_seen = self._chunks
        self._beat = self.upstream.loop.call_later(HEARTBEAT, self._heartbeat)

    # -- ends -----------------------------------------------------------------------------
    def client_lost(self) -> None:
        self._client_open = False
        if self.upstream.transport is not None:
            self.upstream.transport.close()  # after what is buffered for it
        self._ended()

    def upstream_lost(self) -> None:
        self._upstream_open = False
        self.client.close()
        self._ended()

    def _ended(self) -> None:
        if self._client_open or self._upstream_open:
            if self._linger is None:
                self._linger = self.upstream.loop.call_later(LINGER, self.abort)
            return
        for timer in (self._linger, self._stall, self._beat):
            if timer is not None:
                timer.cancel()
        if not self.done.done():
            self.done.set_result(None)

    def shutdown(self) -> None:
        """Server shutdown: a 1012 close frame to each side not in the middle of a frame."""
        if self._stopping:
            return
        self._stopping = True
        if self._client_open and self.to_client.at_boundary:
            self.client.write(close_frame(GOING_AWAY, masked=False))
        upstream = self.upstream.transport
        if self._upstream_open and upstream is not None and self.to_upstream.at_boundary:
            upstream.write(close_frame(GOING_AWAY, masked=True))
        self.client.close()
        if upstream is not None:
            upstream.close()

    def abort(self) -> None:
        self._stopping = True
        if self.client is not None and self._client_open:
            self.client.abort()
        if self._upstream_open:
            self.upstream.abort()
