"""`build_app(plane) -> Starlette`: Daytona's REST API, routes relative to `/api`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.types import ASGIApp
from starlette.websockets import WebSocket

from controlplane import errors
from controlplane.sandboxes import routes as sandbox_routes
from proxy import __version__

if TYPE_CHECKING:
    from controlplane.plane import ControlPlane
    from controlplane.sandboxes.routes import PublicUrls

API_PREFIX = "/api"


def _config(default_snapshot: str, urls: PublicUrls) -> JSONResponse:
    # DaytonaConfiguration (§1.4): its required fields, with this server's real proxy URLs;
    # no analyticsApiUrl, so get_metrics asks /sandbox/{id}/telemetry/metrics. No OIDC here:
    # API keys only ("-" fills the required strings).
    from controlplane.sandboxes.service import MAX_AUTO_ARCHIVE

    return JSONResponse({
        "version": __version__, "oidc": {"issuer": "-", "clientId": "-", "audience": "-", "provider": "-"},
        "linkedAccountsEnabled": False, "announcements": {},
        "proxyTemplateUrl": urls.preview("{{sandboxId}}", 0).replace("0-", "{{PORT}}-", 1),
        "proxyToolboxUrl": urls.toolbox, "defaultSnapshot": default_snapshot, "dashboardUrl": urls.base,
        "maxAutoArchiveInterval": MAX_AUTO_ARCHIVE, "maintananceMode": False, "environment": "local",
    })


def api_routes(plane: ControlPlane, mcp: ASGIApp | None = None) -> list[BaseRoute]:
    from controlplane.sandboxes.service import DEFAULT_SNAPSHOT

    async def config(request: Request) -> Response:
        return _config(DEFAULT_SNAPSHOT, plane.urls)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def no_websocket(websocket: WebSocket) -> None:
        # Refused before the handshake completes (a 403 to the client).
        await websocket.close(code=1008)

    return [
        Route("/config", config, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        *sandbox_routes.routes(plane.sandboxes, plane.urls),
        *plane.resources.routes(),
        # MCP over streamable HTTP (mcpserver/http.py; it checks the key itself).
        *([Route("/mcp", mcp)] if mcp is not None else []),
        # Socket.IO lives at /api/socket.io (controlplane/events.py); other WebSockets are refused.
        WebSocketRoute("/{path:path}", no_websocket),
    ]


def build_app(plane: ControlPlane, host_routes: Sequence[BaseRoute] = (), mcp: ASGIApp | None = None) -> Starlette:
    """`host_routes` live outside `/api`: the proxy forwards only `/api/...`, so they are
    reachable on the control socket alone (root-only diagnostics of the backend).
    Socket.IO comes first: its WebSockets would otherwise meet the API's refusing catch-all."""
    app = Starlette(routes=[Mount(f"{API_PREFIX}/socket.io", app=plane.events.app),
                            Mount(API_PREFIX, routes=api_routes(plane, mcp)), *host_routes],
                    exception_handlers=errors.HANDLERS)
    app.state.keys = plane.keys
    return app
