"""uvicorn's httptools protocol with the limits it lacks, for the daemon and the proxy.

uvicorn 0.54 on httptools has no header timeout (a client that connects and sends
nothing, or one header byte a minute, holds its socket forever), no header size limit
(a 200 MiB header line is buffered whole) and no idle timeout while a request body
arrives (llhttp itself already rejects Content-Length with Transfer-Encoding, and duplicate
Content-Lengths, with a 400: no request smuggling through the proxy). This class adds:

- a deadline for the request line and headers, from connect (or from the first byte of a
  later keep-alive request): 408 and close, or a silent close if nothing was sent;
- a cap on the bytes of the request line and headers: 431 and close;
- an idle timeout while the body arrives and the app is reading it: 408 and close
  (not while reading is paused because the app is slow: that is not the client's fault).

Limits come from the environment so that every uvicorn worker process sees them:
TOOLBOX_HTTP_HEADER_TIMEOUT (s, default 30), TOOLBOX_HTTP_BODY_TIMEOUT (s, default 120),
TOOLBOX_HTTP_MAX_HEADER_BYTES (default 65536).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from toolbox.options import env_float


def _reply(status: bytes, message: str) -> bytes:
    body = message.encode()
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout = env_float("TOOLBOX_HTTP_HEADER_TIMEOUT", 30.0)
    body_timeout = env_float("TOOLBOX_HTTP_BODY_TIMEOUT", 120.0)
    max_header_bytes = int(env_float("TOOLBOX_HTTP_MAX_HEADER_BYTES", 65536))

    _guard: asyncio.TimerHandle | None = None
    _guarding_body = False
    _in_head = True  # between a message's (or the connection's) start and its headers' end
    _head_bytes = 0
    _last_body_data = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout, self._head_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    # -- timers ---------------------------------------------------------------------------
    def _arm(self, delay: float, callback: object) -> None:
        self._disarm()
        self._guard = self.loop.call_later(delay, callback)  # type: ignore[arg-type]
        self._guarding_body = callback == self._body_idle

    def _disarm(self) -> None:
        if self._guard is not None:
            self._guard.cancel()
            self._guard = None
        self._guarding_body = False

    def _close_with(self, status: bytes, message: str) -> None:
        if not self.transport.is_closing():
            self.transport.write(_reply(status, message))
            self.transport.close()

    def _head_expired(self) -> None:
        self._guard = None
        if not self._in_head or self.transport.is_closing():
            return
        if self._head_bytes or self.headers:
            self._close_with(b"408 Request Timeout",
                             f"The request headers did not arrive within {self.header_timeout:g} s.")
        else:
            self.transport.close()  # connected and said nothing: nobody to answer

    def _body_idle(self) -> None:
        self._guard = None
        self._guarding_body = False
        cycle = self.cycle
        if cycle is None or not cycle.more_body or cycle.disconnected or self.transport.is_closing():
            return
        if self.flow.read_paused:  # the app is not reading: wait for it, not for the client
            self._arm(self.body_timeout, self._body_idle)
            return
        quiet = self.loop.time() - self._last_body_data
        if quiet < self.body_timeout:  # bytes came since the timer was set: wait the rest
            self._arm(self.body_timeout - quiet, self._body_idle)
            return
        if cycle.response_started:
            self.transport.close()
        else:
            self._close_with(b"408 Request Timeout",
                             f"No request body bytes arrived for {self.body_timeout:g} s.")

    # -- parsing --------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        was_in_head = self._in_head
        super().data_received(data)
        if self.transport.is_closing():
            self._disarm()
            return
        if self._in_head:
            if was_in_head:  # the whole chunk was request line and headers
                self._head_bytes += len(data)
                if self._head_bytes > self.max_header_bytes:
                    self._disarm()
                    self._too_large()
            return
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not cycle.disconnected:
            # One timer per body, not one per read: it checks this stamp when it fires.
            self._last_body_data = self.loop.time()
            if not self._guarding_body:
                self._arm(self.body_timeout, self._body_idle)
        elif self._guarding_body:
            self._disarm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._in_head:  # a keep-alive request: its own deadline, from its first byte
            self._in_head = True
            self._head_bytes = 0
            self._arm(self.header_timeout, self._head_expired)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._disarm()
        # Headers that arrived in one read are only measurable here, once parsed.
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.max_header_bytes:
            self._too_large()
            return
        super().on_headers_complete()

    def _too_large(self) -> None:
        self._close_with(b"431 Request Header Fields Too Large",
                         f"The request line and headers exceed {self.max_header_bytes} bytes.")

    # After a refusal the parser still runs over the rest of the read: nothing to deliver.
    def on_body(self, body: bytes) -> None:
        if not self.transport.is_closing():
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self.transport.is_closing():
            super().on_message_complete()
