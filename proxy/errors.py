"""Errors the proxy itself makes: `X-Proxy-Error: <code>`, JSON for API clients and a short
HTML page for browser navigations (decided by Sec-Fetch-Mode, then Accept; never by UA)."""

from __future__ import annotations

import html
import json
from datetime import datetime, timezone

from starlette.types import Scope, Send

_TITLES = {400: "Bad request", 401: "Authentication required", 403: "Forbidden", 404: "Not found",
           502: "Bad gateway", 503: "Service unavailable", 504: "Gateway timeout"}


class ProxyError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def wants_html(scope: Scope) -> bool:
    mode = header(scope, b"sec-fetch-mode")
    if mode is not None:
        return mode == b"navigate"
    if header(scope, b"x-requested-with") is not None:
        return False
    accept = header(scope, b"accept") or b""
    return b"text/html" in accept


def _page(status: int, code: str, message: str) -> bytes:
    title = _TITLES.get(status, "Error")
    return (
        "<!doctype html><html><head><meta charset=utf-8>"
        f"<title>{status} {title}</title><meta name=viewport content='width=device-width'>"
        "<style>body{font:16px system-ui,sans-serif;max-width:40em;margin:4em auto;padding:0 1em;color:#222}"
        "code{background:#eee;padding:0 .3em}</style></head><body>"
        f"<h1>{status} {title}</h1><p>{html.escape(message)}</p>"
        f"<p><small>Preview proxy error <code>{html.escape(code)}</code></small></p></body></html>"
    ).encode()


def render(scope: Scope, error: ProxyError) -> tuple[list[tuple[bytes, bytes]], bytes]:
    headers = [(b"x-proxy-error", error.code.encode()), (b"cache-control", b"no-store"),
               (b"referrer-policy", b"no-referrer")]
    if scope["type"] == "http" and wants_html(scope):
        body = _page(error.status, error.code, error.message)
        headers += [(b"content-type", b"text/html; charset=utf-8"),
                    (b"content-security-policy", b"default-src 'none'; style-src 'unsafe-inline'")]
    else:
        body = json.dumps({
            "statusCode": error.status,
            "code": error.code,
            "message": error.message,
            "timestamp": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
            "path": scope.get("path", ""),
            "method": scope.get("method", "GET"),
        }).encode()
        headers.append((b"content-type", b"application/json"))
    headers.append((b"content-length", str(len(body)).encode()))
    return headers, body


async def send_error(scope: Scope, send: Send, error: ProxyError, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers, body = render(scope, error)
    headers += extra or []
    if scope["type"] == "websocket":
        if "websocket.http.response" in scope.get("extensions", {}):
            await send({"type": "websocket.http.response.start", "status": error.status, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": error.message[:120]})
        return
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
