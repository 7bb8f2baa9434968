"""The MCP server over streamable HTTP, as an ASGI app the control plane serves at
`/api/mcp` (so it is reached through the proxy like the rest of `/api`).

Auth is the API key as a Bearer token, checked before any MCP message is read: a missing
or unknown key is a 401 in Daytona's error shape. Each tool call then talks to the
control plane and the toolbox with that same key, so it sees exactly what the key's
organization sees (another organization's sandbox is "not found"), with no second
tenancy check to get wrong.

Stateless mode with JSON responses: every POST is a whole exchange and nothing is kept
between requests (what has state, an interpreter context or a running command, lives in
the sandbox), so any number of clients and restarts of the main job are fine. The SDK's
DNS-rebinding guard (a Host allow-list) is off: it protects servers that trust the
browser's network position, while this one needs a key that a rebinding page does not
have, and its Host is whatever domain the operator serves.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import anyio
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from client import Client, Config
from mcpserver.sandboxes import ToolFailure
from mcpserver.transport import SharedTransport

if TYPE_CHECKING:
    from mcp.server.mcpserver import Context, MCPServer

    from toolbox.tasks import BackgroundTask

Authenticate = Callable[[str], Awaitable[bool]]
Spawn = Callable[..., "BackgroundTask"]  # TaskOwner.spawn(coro, name=...)
MAX_CLIENTS = 64


def bearer_key(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, key = authorization.partition(" ")
    key = key.strip()
    return key if scheme.lower() == "bearer" and key else None


class McpEndpoint:
    """Built on the first request: importing the MCP SDK takes seconds here, which the main
    job's start should not pay for an endpoint many deployments never call."""

    def __init__(self, authenticate: Authenticate, api_url: str, spawn: Spawn) -> None:
        """`spawn` starts background work in the owner's task group (the main job's)."""
        self._authenticate = authenticate
        self._api_url = api_url
        self._spawn = spawn
        self._transport = SharedTransport()
        # One client per key in use (each is a few headers over the shared pool), newest last.
        self._clients: OrderedDict[str, Client] = OrderedDict()
        self._app: ASGIApp | None = None
        self._starting: asyncio.Lock | None = None
        self._serving: BackgroundTask | None = None
        self._stop: asyncio.Event | None = None

    def _client(self, ctx: Context) -> Client:
        key = bearer_key((ctx.headers or {}).get("authorization"))
        if key is None:  # the endpoint refuses such requests before MCP sees them
            raise ToolFailure("no API key on this request")
        client = self._clients.pop(key, None)
        if client is None:
            client = Client(Config(self._api_url, key, "Authorization"), transport=self._transport)
            while len(self._clients) >= MAX_CLIENTS:
                self._clients.popitem(last=False)
        self._clients[key] = client
        return client

    async def _ready(self) -> ASGIApp:
        if self._app is not None:
            return self._app
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._app is None:
                self._app = await self._start()
        return self._app

    async def _start(self) -> ASGIApp:
        server = await anyio.to_thread.run_sync(self._build)  # the SDK's imports, off the event loop
        from mcp.server.streamable_http_manager import StreamableHTTPASGIApp

        manager = server.session_manager
        started = asyncio.Event()
        stop = self._stop = asyncio.Event()
        failed: list[BaseException] = []

        async def serve() -> None:
            # The SDK's task group for requests in flight, open until `aclose()`.
            try:
                async with manager.run():
                    started.set()
                    await stop.wait()
            except BaseException as exc:
                failed.append(exc)
                raise
            finally:
                started.set()

        self._serving = self._spawn(serve(), name="MCP endpoint")
        await started.wait()
        if failed:
            raise RuntimeError("the MCP endpoint could not start") from failed[0]
        return StreamableHTTPASGIApp(manager)

    def _build(self) -> MCPServer:
        from mcp.server.transport_security import TransportSecuritySettings

        from mcpserver.server import build_server

        # Building a server runs the SDK's logging.basicConfig (a Rich handler on the root
        # logger): the main job's logging is not the SDK's to change, so it is put back.
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        try:
            server = build_server(self._client)
        finally:
            root.handlers[:] = handlers
            root.setLevel(level)
        server.streamable_http_app(
            stateless_http=True, json_response=True,
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False))
        return server

    async def aclose(self) -> None:
        """Let calls in flight end, close the SDK's task group and the connection pool."""
        if self._stop is not None:
            self._stop.set()
        if self._serving is not None:
            await self._serving.wait()
        self._clients.clear()
        self._transport.shutdown()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        key = bearer_key(Headers(scope=scope).get("authorization"))
        if key is None:
            await _unauthorized(scope, send, "missing API key: send it as 'Authorization: Bearer <key>' "
                                             "(DAYTONA_API_KEY; `python -m mcpserver config` prints the setup)")
            return
        if not await self._authenticate(key):
            await _unauthorized(scope, send, "Invalid credentials: the API key is unknown")
            return
        if scope["method"] == "GET":
            # A GET opens a stream for messages the server starts; a stateless server has none
            # to send, and the spec's answer for "no stream here" is 405 (clients carry on).
            await _respond(send, 405, {"error": "Method Not Allowed", "message": "this endpoint answers POSTs "
                                       "only (stateless: no server-to-client stream)"}, [(b"allow", b"POST")])
            return
        app = await self._ready()
        await app(scope, receive, send)


async def _unauthorized(scope: Scope, send: Send, message: str) -> None:
    await _respond(send, 401, {
        "statusCode": 401, "error": "Unauthorized", "message": message, "code": "UNAUTHORIZED",
        "source": "DAYTONA_API", "path": scope.get("path", ""),
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }, [(b"www-authenticate", b'Bearer realm="sandbox-toolbox"')])


async def _respond(send: Send, status: int, body: dict[str, object], headers: list[tuple[bytes, bytes]]) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": data})
