"""Relay one ASGI request or WebSocket to an upstream server over aiohttp.

Shared by the daemon's `/proxy/{port}` route and the preview proxy. Bodies stream both
ways chunk by chunk (never buffered, no size limit, compressed bytes untouched); the raw
path and query reach the upstream byte for byte; WebSockets are bridged frame by frame.

aiohttp, not httpx, on the hot path: architecture.md §5 measured ~6,900 vs 585 req/s.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from starlette.types import Message, Receive, Scope, Send
from yarl import URL

Headers = list[tuple[bytes, bytes]]

# RFC 9110 §7.6.1 connection-specific headers, plus the proxy-only ones.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"proxy-authorization", b"proxy-authenticate",
})
# The WebSocket handshake is per hop: each side negotiates its own key and extensions.
WS_HANDSHAKE = frozenset({
    b"sec-websocket-key", b"sec-websocket-version", b"sec-websocket-extensions",
    b"sec-websocket-protocol", b"sec-websocket-accept",
})
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Connection refused while an app starts: E2B retries its dial 5 times over ~1 s.
RETRY_DELAYS = (0.1, 0.2, 0.3, 0.4)
WS_MAX_MESSAGE = 64 * 1024 * 1024
READ_BUFFER = 256 * 1024
_OWN_RESPONSE_HEADERS = frozenset({b"date"})
# Close codes that may not be sent on the wire (RFC 6455 §7.4.1).
_UNSENDABLE_CLOSE = frozenset({1005, 1006, 1015})


class UpstreamUnavailable(Exception):
    """The upstream refused or dropped the connection before answering."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UpstreamRejected(Exception):
    """The upstream answered a WebSocket handshake with a non-101 status."""

    def __init__(self, status: int, headers: Headers) -> None:
        super().__init__(f"upstream answered {status}")
        self.status = status
        self.headers = headers


def strip_hop_by_hop(headers: Iterable[tuple[bytes, bytes]], extra: frozenset[bytes] = frozenset()) -> Headers:
    """Drop hop-by-hop headers and every header the Connection header names."""
    pairs = [(k.lower(), v) for k, v in headers]
    named: set[bytes] = set()
    for key, value in pairs:
        if key == b"connection":
            named.update(token.strip().lower() for token in value.split(b","))
    return [(k, v) for k, v in pairs if k not in HOP_BY_HOP and k not in named and k not in extra]


def has_request_body(headers: Headers) -> bool:
    for key, value in headers:
        if key == b"transfer-encoding":
            return True
        if key == b"content-length":
            return value.strip() not in (b"0", b"")
    return False


class LoopbackResolver(AbstractResolver):
    """`localhost` is both 127.0.0.1 and ::1, tried in that order, without a DNS thread hop."""

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        return [
            ResolveResult(hostname=host, host="127.0.0.1", port=port, family=socket.AF_INET, proto=0, flags=0),
            ResolveResult(hostname=host, host="::1", port=port, family=socket.AF_INET6, proto=0, flags=0),
        ]

    async def close(self) -> None:
        return None


def new_session(*, unix_path: str | None = None, loopback: bool = False, keepalive: float = 30.0) -> aiohttp.ClientSession:
    """A pooled session tuned for relaying: no decompression, no timeouts on streams."""
    connector: aiohttp.BaseConnector
    if unix_path is not None:
        connector = aiohttp.UnixConnector(path=unix_path, limit=0, keepalive_timeout=keepalive)
    else:
        connector = aiohttp.TCPConnector(
            limit=0, keepalive_timeout=keepalive, resolver=LoopbackResolver() if loopback else None,
            use_dns_cache=True, ttl_dns_cache=10,
        )
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_connect=10, sock_read=None),
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        read_bufsize=READ_BUFFER,
        max_field_size=65536,
        max_line_size=65536,
        cookie_jar=aiohttp.DummyCookieJar(),
    )


def upstream_url(base: str, raw_path: bytes, query: bytes) -> URL:
    """`base` + the raw (still percent-encoded) path and query, not re-quoted."""
    text = base + raw_path.decode("latin-1")
    if query:
        text += "?" + query.decode("latin-1")
    return URL(text, encoded=True)


def _str_headers(headers: Headers) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]


@dataclass
class Relay:
    """One upstream session plus the hooks the caller wants on real traffic."""

    session: aiohttp.ClientSession
    retry_refused: bool = True
    ws_max_message: int = WS_MAX_MESSAGE

    async def _open(self, method: str, url: URL, headers: Headers, data: Any, retry: bool) -> aiohttp.ClientResponse:
        delays: tuple[float, ...] = RETRY_DELAYS if retry else ()
        attempt = 0
        while True:
            try:
                return await self.session.request(
                    method, url, headers=_str_headers(headers), data=data,
                    allow_redirects=False, compress=None, chunked=None,
                )
            except aiohttp.ClientConnectorError as exc:
                if attempt >= len(delays):
                    raise UpstreamUnavailable("connection refused") from exc
            except aiohttp.ServerDisconnectedError as exc:
                # A pooled keep-alive connection the upstream closed as we reused it.
                if not retry or attempt >= 1:
                    raise UpstreamUnavailable("the upstream closed the connection") from exc
            await asyncio.sleep(delays[attempt] if attempt < len(delays) else 0)
            attempt += 1

    async def http(
        self, scope: Scope, receive: Receive, send: Send, url: URL, headers: Headers,
        response_headers_filter: Callable[[Headers], Headers] | None = None,
        on_traffic: Callable[[], None] | None = None,
        intercept: Callable[[aiohttp.ClientResponse], Awaitable[bool]] | None = None,
    ) -> int:
        """Relay one HTTP exchange; returns the upstream status.

        Raises UpstreamUnavailable before anything was sent to the client. `intercept`
        sees the upstream response first and may answer the client itself (returns True).
        """
        method: str = scope["method"]
        with_body = has_request_body(scope["headers"])
        body_done = not with_body
        disconnected = False

        async def body() -> AsyncIterator[bytes]:
            nonlocal body_done, disconnected
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    disconnected = True
                    raise ConnectionResetError("client disconnected during the upload")
                chunk = message.get("body", b"")
                if chunk:
                    yield chunk
                if not message.get("more_body", False):
                    body_done = True
                    return

        retry = self.retry_refused and method in IDEMPOTENT and not with_body
        try:
            response = await self._open(method, url, headers, body() if with_body else None, retry)
        except aiohttp.ClientError as exc:
            if disconnected:
                raise asyncio.CancelledError() from exc
            raise UpstreamUnavailable(str(exc) or type(exc).__name__) from exc
        if on_traffic is not None:
            on_traffic()
        watcher: asyncio.Task[None] | None = None
        try:
            if intercept is not None and await intercept(response):
                return response.status
            # Our server adds its own Date; two would confuse caches.
            out_headers = strip_hop_by_hop(response.raw_headers, _OWN_RESPONSE_HEADERS)
            if response_headers_filter is not None:
                out_headers = response_headers_filter(out_headers)
            await send({"type": "http.response.start", "status": response.status, "headers": out_headers})
            if body_done:
                watcher = asyncio.create_task(_close_on_disconnect(receive, response))
            async for chunk in response.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except (aiohttp.ClientError, asyncio.TimeoutError):
            # Headers are out: all we can do is cut the client's response short.
            response.close()
        finally:
            if watcher is not None:
                watcher.cancel()
            response.release()
        return response.status

    async def websocket(
        self, scope: Scope, receive: Receive, send: Send, url: URL, headers: Headers,
        on_traffic: Callable[[], None] | None = None, handshake_received: bool = False,
    ) -> None:
        """Connect upstream first, then accept the client with the upstream's subprotocol."""
        if not handshake_received:
            message = await receive()
            if message["type"] != "websocket.connect":
                return
        protocols = tuple(scope.get("subprotocols") or ())
        try:
            upstream = await self.session.ws_connect(
                url, headers=_str_headers(strip_hop_by_hop(headers, WS_HANDSHAKE)), protocols=protocols,
                autoclose=True, autoping=True, max_msg_size=self.ws_max_message, compress=0,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0),
            )
        except aiohttp.WSServerHandshakeError as exc:
            raise UpstreamRejected(exc.status, [(k.lower().encode("latin-1"), v.encode("latin-1"))
                                                for k, v in (exc.headers or {}).items()]) from exc
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamUnavailable("connection refused") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(str(exc) or type(exc).__name__) from exc
        async with upstream:
            await send({"type": "websocket.accept", "subprotocol": upstream.protocol})
            await _bridge(receive, send, upstream, on_traffic)


async def _close_on_disconnect(receive: Receive, response: aiohttp.ClientResponse) -> None:
    """Stop reading the upstream once the client hangs up (a 10 GiB download, an SSE stream)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            response.close()
            return


def _sendable(code: int | None) -> int:
    if code is None or code in _UNSENDABLE_CLOSE or code < 1000:
        return 1000
    return code


async def _bridge(receive: Receive, send: Send, upstream: aiohttp.ClientWebSocketResponse,
                  on_traffic: Callable[[], None] | None) -> None:
    async def client_to_upstream() -> None:
        while True:
            message: Message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                if on_traffic is not None:
                    on_traffic()
                text = message.get("text")
                if text is not None:
                    await upstream.send_str(text)
                else:
                    await upstream.send_bytes(message.get("bytes") or b"")
            elif kind == "websocket.disconnect":
                reason = message.get("reason") or ""
                await upstream.close(code=_sendable(message.get("code")), message=reason.encode())
                return

    async def upstream_to_client() -> None:
        code, reason = 1011, ""
        while True:
            msg = await upstream.receive()
            if msg.type == aiohttp.WSMsgType.TEXT:
                if on_traffic is not None:
                    on_traffic()
                await send({"type": "websocket.send", "text": msg.data})
            elif msg.type == aiohttp.WSMsgType.BINARY:
                if on_traffic is not None:
                    on_traffic()
                await send({"type": "websocket.send", "bytes": msg.data})
            elif msg.type == aiohttp.WSMsgType.CLOSE:
                code, reason = _sendable(msg.data), msg.extra or ""
                break
            elif msg.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                break
        await send({"type": "websocket.close", "code": code, "reason": reason})

    tasks = [asyncio.create_task(client_to_upstream()), asyncio.create_task(upstream_to_client())]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        exc = task.exception()
        if exc is not None and not isinstance(exc, (ConnectionError, aiohttp.ClientError, OSError)):
            raise exc
