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

import json
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from mcp.server.mcpserver import Context
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from mcp.server.transport_security import TransportSecuritySettings
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from client import Client, Config
from mcpserver.sandboxes import ToolFailure
from mcpserver.server import build_server
from mcpserver.transport import SharedTransport

Authenticate = Callable[[str], Awaitable[bool]]
MAX_CLIENTS = 64


def bearer_key(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, key = authorization.partition(" ")
    key = key.strip()
    return key if scheme.lower() == "bearer" and key else None


class McpEndpoint:
    def __init__(self, authenticate: Authenticate, api_url: str) -> None:
        self._authenticate = authenticate
        self._api_url = api_url
        self._transport = SharedTransport()
        # One client per key in use (each is a few headers over the shared pool), newest last.
        self._clients: OrderedDict[str, Client] = OrderedDict()
        self.server = build_server(self._client)
        self.server.streamable_http_app(
            stateless_http=True, json_response=True,
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False))
        self._mcp = StreamableHTTPASGIApp(self.server.session_manager)

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

    @asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        """The SDK's task group for requests in flight: open while the main job serves."""
        try:
            async with self.server.session_manager.run():
                yield
        finally:
            self._clients.clear()
            self._transport.shutdown()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        key = bearer_key(Headers(scope=scope).get("authorization"))
        if key is None:
            await _unauthorized(scope, send, "missing API key: send it as 'Authorization: Bearer <key>' "
                                             "(DAYTONA_API_KEY; `sandbox-toolbox mcp config` prints the setup)")
            return
        if not await self._authenticate(key):
            await _unauthorized(scope, send, "Invalid credentials: the API key is unknown")
            return
        await self._mcp(scope, receive, send)


async def _unauthorized(scope: Scope, send: Send, message: str) -> None:
    body = json.dumps({
        "statusCode": 401, "error": "Unauthorized", "message": message, "code": "UNAUTHORIZED",
        "source": "DAYTONA_API", "path": scope.get("path", ""),
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }).encode()
    await send({"type": "http.response.start", "status": 401,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"www-authenticate", b'Bearer realm="sandbox-toolbox"')]})
    await send({"type": "http.response.body", "body": body})
