"""Relay one ASGI request or WebSocket to an upstream server.

Shared by the daemon's `/proxy/{port}` route and the preview proxy. Bodies stream both
ways chunk by chunk (never buffered, no size limit, compressed bytes untouched); the raw
path and query reach the upstream byte for byte.

HTTP goes over `pool.py` (asyncio Protocol + httptools): httpx managed 585 req/s per hop
(architecture.md §5), aiohttp's client ~3,200 through the daemon, this pool ~10,000+.
WebSockets are spliced: the handshake goes upstream, and after its 101 the two
connections are joined as raw byte streams (`splice.py`).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field

from starlette.types import Receive, Scope, Send

from toolbox.forward.pool import ConnectionPool, UpstreamConnection
from toolbox.forward.splice import SPLICE, Splice, UpstreamRejected, open_upgrade  # noqa: F401 - UpstreamRejected is re-exported

Headers = list[tuple[bytes, bytes]]

# RFC 9110 §7.6.1 connection-specific headers, plus the proxy-only ones.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"proxy-authorization", b"proxy-authenticate",
})
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Connection refused while an app starts: E2B retries its dial 5 times over ~1 s.
RETRY_DELAYS = (0.1, 0.2, 0.3, 0.4)
_OWN_RESPONSE_HEADERS = frozenset({b"date"})
# Framing is rebuilt per hop; Expect was answered by our own server already.
_NOT_FORWARDED = frozenset({b"content-length", b"transfer-encoding", b"expect"})


class UpstreamUnavailable(Exception):
    """The upstream refused or dropped the connection before answering."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UpstreamUnknownHost(UpstreamUnavailable):
    """The upstream's host name does not resolve (e.g. no such Service for this sandbox)."""


class UpstreamTimeout(UpstreamUnavailable):
    """The upstream accepted the connection but did not answer a WebSocket handshake in time."""


def strip_hop_by_hop(headers: Iterable[tuple[bytes, bytes]], extra: frozenset[bytes] = frozenset()) -> Headers:
    """Drop hop-by-hop headers and every header the Connection header names (names lowercased)."""
    out: Headers = []
    named: set[bytes] | None = None
    for key, value in headers:
        key = key.lower()
        if key in HOP_BY_HOP or key in extra:
            if key == b"connection":
                named = {token.strip().lower() for token in value.split(b",")}
            continue
        out.append((key, value))
    if named:
        out = [(k, v) for k, v in out if k not in named]
    return out


class Target:
    """Where a request goes: a pool, host and port, and the raw path and query."""

    __slots__ = ("pool", "host", "port", "path")

    def __init__(self, pool: ConnectionPool, host: str, port: int, path: bytes) -> None:
        self.pool = pool
        self.host = host
        self.port = port
        self.path = path  # byte for byte, as the client sent it


class _ClientGone(Exception):
    pass


@dataclass
class Relay:
    """HTTP over the lean keep-alive pool, WebSockets spliced over a connection of their own."""

    unix_path: str | None = None
    keepalive: float = 30.0
    retry_refused: bool = True
    peer_uid: int | None = None  # with unix_path: the uid the listening process must have
    pool: ConnectionPool = field(init=False)

    def __post_init__(self) -> None:
        self.pool = ConnectionPool(unix_path=self.unix_path, keepalive=self.keepalive, peer_uid=self.peer_uid)

    async def close(self) -> None:
        self.pool.close()

    async def http(
        self, scope: Scope, receive: Receive, send: Send, target: Target, headers: Headers,
        response_headers_filter: Callable[[Headers], Headers] | None = None,
        on_traffic: Callable[[], None] | None = None,
        intercept: Callable[[UpstreamConnection], Awaitable[bool]] | None = None,
    ) -> int:
        """Relay one HTTP exchange; returns the upstream status.

        Raises UpstreamUnavailable before anything was sent to the client. `intercept`
        sees the upstream response first and may answer the client itself (returns True).
        Three steps, as httpx's `_send_handling_auth` -> `_send_handling_redirects` ->
        `_send_single_request`: `_exchange` retries what may be retried around `_send`
        (one connection: the head, the body, the response's head), then `_respond`
        streams the answer to the client.
        """
        request = _Request.of(scope, target, headers)
        delays = RETRY_DELAYS if (self.retry_refused and request.idempotent) else ()
        try:
            conn, upload = await self._exchange(request, receive, target, delays)
        except _ClientGone:
            return 499
        return await self._respond(conn, upload, receive, send, target, response_headers_filter, on_traffic,
                                   intercept)

    async def _exchange(self, request: _Request, receive: Receive, target: Target,
                        delays: tuple[float, ...]) -> tuple[UpstreamConnection, asyncio.Task[None] | None]:
        """A connection whose response head has arrived, and the upload still running (if any).

        A refused connect is retried after each of `delays`; a kept-alive connection the
        upstream closed just as we reused it, once, on a fresh one (idempotent requests only).
        """
        waits = iter(delays)  # shared by every attempt, as one budget
        stale_retried = False
        while True:
            conn = await _connect(target, waits)
            try:
                return conn, await self._send(conn, request, receive)
            except (ConnectionError, OSError) as exc:
                if conn.reused and request.idempotent and not stale_retried:
                    stale_retried = True
                    continue
                raise UpstreamUnavailable(str(exc) or "the upstream closed the connection") from exc

    async def _send(self, conn: UpstreamConnection, request: _Request,
                    receive: Receive) -> asyncio.Task[None] | None:
        """Send the request on `conn` and wait for the response's head; returns the upload
        task when there is a body (it may still run: an upstream may answer before reading
        it all). On failure `conn` is aborted and the upload ended."""
        conn.head_request = request.method == "HEAD"
        upload: asyncio.Task[None] | None = None
        try:
            conn.write(request.head)
            if request.with_body:
                upload = asyncio.ensure_future(self._send_body(conn, receive, request.chunked))
                await asyncio.wait((upload, conn.headers_done), return_when=asyncio.FIRST_COMPLETED)
                if upload.done() and (error := upload.exception()) is not None:
                    raise error
            await conn.headers_done
            return upload
        except _ClientGone:
            conn.abort()  # the client left mid-upload: nobody to answer
            raise
        except (ConnectionError, OSError):
            conn.abort()
            if upload is not None:
                upload.cancel()
                upload.add_done_callback(_consume)
            raise

    async def _send_body(self, conn: UpstreamConnection, receive: Receive, chunked: bool) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone()
            chunk = message.get("body", b"")
            if chunk:
                if chunked:
                    conn.write_chunk(chunk)
                else:
                    conn.write(chunk)
                await conn.drain()
            if not message.get("more_body", False):
                if chunked:
                    conn.write(b"0\r\n\r\n")
                return

    async def _respond(
        self, conn: UpstreamConnection, upload: asyncio.Task[None] | None, receive: Receive, send: Send,
        target: Target, response_headers_filter: Callable[[Headers], Headers] | None,
        on_traffic: Callable[[], None] | None,
        intercept: Callable[[UpstreamConnection], Awaitable[bool]] | None,
    ) -> int:
        """Hand the upstream's answer to the client; the connection goes back to the pool
        only when both the upload and the response ended cleanly."""
        status = conn.status
        watcher: asyncio.Task[None] | None = None
        try:
            if intercept is not None and await intercept(conn):
                conn.abort()
                return status
            # Our server adds its own Date; two would confuse caches.
            out_headers = strip_hop_by_hop(conn.headers, _OWN_RESPONSE_HEADERS)
            if response_headers_filter is not None:
                out_headers = response_headers_filter(out_headers)
            await send({"type": "http.response.start", "status": status, "headers": out_headers})
            if conn.complete and upload is None:
                # The whole (small) body is already here: one write for the client.
                await send({"type": "http.response.body", "body": conn.take(), "more_body": False})
                target.pool.release(conn, target.host, target.port)
                return status
            # Once the upload is over, a client hanging up must stop the upstream stream.
            watcher = asyncio.ensure_future(_close_on_disconnect(receive, conn, upload))
            await _stream_body(conn, send, on_traffic)
            if upload is not None and not upload.done():
                conn.abort()  # the upstream answered without reading the whole body
            else:
                target.pool.release(conn, target.host, target.port)
        except (ConnectionError, OSError):
            # Headers are out: all we can do is cut the client's response short.
            conn.abort()
        finally:
            if watcher is not None:
                watcher.cancel()
            if upload is not None:
                if not upload.done():
                    upload.cancel()
                elif not upload.cancelled():
                    upload.exception()  # seen: the client or upstream left mid-upload
        return status

    async def websocket(
        self, scope: Scope, send: Send, target: Target, headers: Headers,
        on_traffic: Callable[[], None] | None = None,
        response_headers_filter: Callable[[Headers], Headers] | None = None,
    ) -> None:
        """Connect upstream first; on its 101, splice the client to it as raw bytes.

        The client's handshake (key, version, offered subprotocols and extensions) goes
        upstream as it came, and the upstream's answer comes back as it went, so the two
        ends negotiate with each other. Raises UpstreamUnavailable/UpstreamUnknownHost when
        nothing answers, UpstreamRejected for a non-101; both before the client is answered.
        """
        if SPLICE not in scope.get("extensions", {}):
            raise RuntimeError("WebSocket relaying needs uvicorn's ws protocol from toolbox.server.websocket_protocol, "
                               "as `python -m toolbox serve` and `python -m proxy serve` use")
        request = _head(b"GET " + target.path + b" HTTP/1.1", headers, b"connection: Upgrade\r\nupgrade: websocket\r\n")
        try:
            upstream, status_line, response_headers = await open_upgrade(
                unix_path=self.unix_path, host=target.host, port=target.port, head=request, peer_uid=self.peer_uid,
                retry_delays=RETRY_DELAYS if self.retry_refused else ())
        except socket.gaierror as exc:
            raise UpstreamUnknownHost(f"{target.host} does not resolve") from exc
        except TimeoutError as exc:
            raise UpstreamTimeout(str(exc)) from exc
        except ConnectionRefusedError as exc:
            raise UpstreamUnavailable("connection refused") from exc
        except OSError as exc:
            raise UpstreamUnavailable(str(exc) or type(exc).__name__) from exc
        # Connection and Upgrade are this hop's, and exactly what the client needs to see.
        kept = [(k, v) for k, v in response_headers if k not in _OWN_RESPONSE_HEADERS]
        if response_headers_filter is not None:
            kept = response_headers_filter(kept)
        splice = Splice(upstream, on_traffic)
        try:
            await send({"type": SPLICE, "splice": splice, "response": _head(status_line, kept)})
            await splice.done
        except BaseException:
            splice.abort()  # cancelled (drain time over) or the client is gone
            raise


def _head(start_line: bytes, headers: Headers, extra_lines: bytes = b"") -> bytes:
    """An HTTP/1.1 message head: the start line, the headers, `extra_lines` (CRLF-ended), a blank line."""
    parts = [start_line, b"\r\n"]
    for key, value in headers:
        parts += (key, b": ", value, b"\r\n")
    parts += (extra_lines, b"\r\n")
    return b"".join(parts)


class _Request:
    """What `Relay.http` sends upstream, worked out once from the client's scope."""

    __slots__ = ("method", "head", "chunked", "with_body", "idempotent")

    def __init__(self, method: str, head: bytes, chunked: bool, with_body: bool) -> None:
        self.method = method
        self.head = head
        self.chunked = chunked
        self.with_body = with_body
        self.idempotent = method in IDEMPOTENT and not with_body

    @classmethod
    def of(cls, scope: Scope, target: Target, headers: Headers) -> _Request:
        method: str = scope["method"]
        length: bytes | None = None
        chunked = False
        for key, value in scope["headers"]:
            if key == b"content-length":
                length = value
            elif key == b"transfer-encoding":
                chunked = True
        with_body = chunked or (length is not None and length.strip() not in (b"0", b""))
        parts = [method.encode(), b" ", target.path, b" HTTP/1.1\r\n"]
        for key, value in headers:
            if key not in _NOT_FORWARDED:
                parts += (key, b": ", value, b"\r\n")
        if chunked:
            parts.append(b"transfer-encoding: chunked\r\n")
        elif length is not None:
            parts += (b"content-length: ", length, b"\r\n")
        parts.append(b"\r\n")
        return cls(method, b"".join(parts), chunked, with_body)


async def _connect(target: Target, waits: Iterator[float]) -> UpstreamConnection:
    """A pooled or new connection; a refused connect waits the next of `waits` and tries again."""
    while True:
        try:
            return await target.pool.acquire(target.host, target.port)
        except socket.gaierror as exc:
            raise UpstreamUnknownHost(f"{target.host} does not resolve") from exc
        except OSError as exc:
            delay = next(waits, None)
            if delay is None:
                raise UpstreamUnavailable("connection refused") from exc
            await asyncio.sleep(delay)


async def _stream_body(conn: UpstreamConnection, send: Send, on_traffic: Callable[[], None] | None) -> None:
    while True:
        chunk = await conn.next_chunk()
        if chunk is None:
            break
        if on_traffic is not None:
            on_traffic()  # a long download or SSE stream is activity all along
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _consume(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()


async def _close_on_disconnect(receive: Receive, conn: UpstreamConnection,
                               upload: asyncio.Future[None] | None = None) -> None:
    """Stop reading the upstream once the client hangs up (a 10 GiB download, an SSE stream)."""
    if upload is not None:
        await asyncio.wait((upload,))  # receive() belongs to the upload until it ends
        if upload.cancelled() or upload.exception() is not None:
            return
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            conn.abort()
            return
