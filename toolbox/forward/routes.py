"""`ANY /proxy/{port}/{path}`: HTTP and WebSocket to localhost:{port} inside the sandbox.

This is how port previews reach sandbox services (toolbox-api.md §14): the preview proxy
sends `{port}-{id}.{domain}` traffic here. Unlike Daytona's route, the port must be a
number in 1-65535 (no `80@host` userinfo tricks), a closed port is retried briefly while
the app starts and then answered with a 502 that says so, and client-sent forwarding
headers are kept rather than appended to.
"""

from __future__ import annotations

import json
from typing import NoReturn

from starlette.routing import BaseRoute, Match, NoMatchFound
from starlette.types import ASGIApp, Receive, Scope, Send

from toolbox.context import Daemon
from toolbox.errors import Code, error_body
from toolbox.forward.relay import (Headers, Relay, Target, UpstreamRejected, UpstreamTimeout, UpstreamUnavailable,
                                   strip_hop_by_hop)
from toolbox.options import env_float

# Sent by the preview proxy when the app should see the public Host instead of localhost:{port}.
PRESERVE_HOST = b"x-toolbox-preserve-host"
PROXY_ERROR = b"x-proxy-error"


def parse_target(raw_path: bytes) -> tuple[int, bytes] | None:
    """`/proxy/{port}{rest}` -> (port, rest with a leading slash), None if the port is bad."""
    tail = raw_path[len(b"/proxy/"):]
    port_text, slash, rest = tail.partition(b"/")
    if not (0 < len(port_text) <= 5 and port_text.isdigit()):
        return None
    port = int(port_text)
    if not 1 <= port <= 65535:
        return None
    return port, slash + rest if slash else b"/"


def upstream_headers(scope: Scope, port: int) -> Headers:
    out: Headers = []
    preserve = False
    host: bytes | None = None
    forwarded_for = forwarded_proto = forwarded_host = False
    for key, value in strip_hop_by_hop(scope["headers"]):
        if key == b"host":
            host = value
            continue
        if key == PRESERVE_HOST:
            preserve = True
            continue
        if key == b"x-forwarded-for":
            forwarded_for = True
        elif key == b"x-forwarded-proto":
            forwarded_proto = True
        elif key == b"x-forwarded-host":
            forwarded_host = True
        out.append((key, value))
    out.append((b"host", host if preserve and host else b"localhost:%d" % port))
    # The preview proxy sets these (and is trusted to); a direct caller gets them set here.
    client = scope.get("client")
    if not forwarded_for and client:
        out.append((b"x-forwarded-for", client[0].encode()))
    if not forwarded_proto:
        out.append((b"x-forwarded-proto", b"https" if scope.get("scheme") in ("https", "wss") else b"http"))
    if not forwarded_host and host:
        out.append((b"x-forwarded-host", host))
    return out


def _without_proxy_error(headers: Headers) -> Headers:
    # Only the proxy and this route may say an error is theirs; an app's header would lie.
    return [(k, v) for k, v in headers if k != PROXY_ERROR]


async def _error(scope: Scope, send: Send, status: int, code: Code, proxy_code: str, message: str) -> None:
    body = json.dumps(error_body(status, message, code, scope.get("path", ""), scope.get("method"))).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (PROXY_ERROR, proxy_code.encode())]
    if scope["type"] == "websocket":
        if "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": 1011, "reason": message[:120]})
            return
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class PortForwarder:
    """Owns the loopback connection pool; one per daemon."""

    def __init__(self) -> None:
        # Apps commonly close idle connections after 5 s (uvicorn, node): stay below it.
        # TOOLBOX_FORWARD_KEEPALIVE (seconds) overrides it; idle sockets close within 1.5x.
        keepalive = env_float("TOOLBOX_FORWARD_KEEPALIVE", 4.0)
        self.relay = Relay(keepalive=keepalive if keepalive > 0 else 4.0)

    async def close(self) -> None:
        await self.relay.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        parsed = parse_target(raw_path)
        if parsed is None:
            if scope["type"] == "websocket":
                await receive()
            await _error(scope, send, 400, Code.BAD_REQUEST, "invalid-port",
                         "the port in /proxy/{port}/ must be a number from 1 to 65535")
            return
        port, rest = parsed
        query: bytes = scope.get("query_string", b"")
        headers = upstream_headers(scope, port)
        target = Target(self.relay.pool, "localhost", port, rest + b"?" + query if query else rest)
        try:
            if scope["type"] == "websocket":
                await self.relay.websocket(scope, send, target, headers, response_headers_filter=_without_proxy_error)
            else:
                await self.relay.http(scope, receive, send, target, headers, _without_proxy_error)
        except UpstreamTimeout as exc:
            await _error(scope, send, 504, Code.BAD_GATEWAY, "upstream-timeout",
                         f"the app on port {port} accepted the connection but did not answer ({exc.reason})")
        except UpstreamUnavailable as exc:
            await _error(scope, send, 502, Code.BAD_GATEWAY, "port-not-open",
                         f"nothing is listening on port {port} inside the sandbox ({exc.reason}); "
                         "start the app or check its port")
        except UpstreamRejected as exc:
            await _error(scope, send, exc.status if 400 <= exc.status < 600 else 502, Code.BAD_GATEWAY,
                         "upstream-rejected-websocket",
                         f"the app on port {port} refused the WebSocket upgrade with status {exc.status}")


class ForwardRoute(BaseRoute):
    """Matches `/proxy/...` for every method, HTTP and WebSocket alike."""

    def __init__(self, forwarder: PortForwarder) -> None:
        self.forwarder = forwarder
        self.path = "/proxy/{port}/{path:path}"

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] in ("http", "websocket"):
            path: str = scope["path"]
            if path.startswith("/proxy/"):
                return Match.FULL, {}
        return Match.NONE, {}

    def url_path_for(self, name: str, /, **path_params: object) -> NoReturn:
        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.forwarder(scope, receive, send)


def build(daemon: Daemon) -> list[BaseRoute]:
    forwarder = PortForwarder()
    daemon.on_shutdown(forwarder.close)
    daemon.port_forwarder = forwarder  # type: ignore[attr-defined]  # for fast_path()
    return [ForwardRoute(forwarder)]


def fast_path(app: ASGIApp, daemon: Daemon) -> ASGIApp:
    """Send `/proxy/...` straight to the forwarder, ahead of the router's ~100 route regexes.

    Preview traffic is the daemon's hottest path; the router would cost more than the relay.
    """
    forwarder: PortForwarder | None = getattr(daemon, "port_forwarder", None)
    if forwarder is None:
        return app

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and scope["path"].startswith("/proxy/"):
            await forwarder(scope, receive, send)
        else:
            await app(scope, receive, send)

    return dispatch
