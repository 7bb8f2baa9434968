"""`build_app(plane) -> Starlette`: Daytona's REST API, routes relative to `/api`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.websockets import WebSocket

from controlplane import errors
from controlplane.sandboxes import routes as sandbox_routes

if TYPE_CHECKING:
    from controlplane.plane import ControlPlane

API_PREFIX = "/api"


def _config(default_snapshot: str) -> JSONResponse:
    # DaytonaConfiguration's required fields (§1.4); no analyticsApiUrl, so get_metrics
    # asks /sandbox/{id}/telemetry/metrics.
    return JSONResponse({
        "version": "0.0.0", "oidc": {"issuer": "-", "clientId": "-", "audience": "-", "provider": "-"},
        "linkedAccountsEnabled": False, "announcements": {}, "proxyTemplateUrl": "-", "proxyToolboxUrl": "-",
        "defaultSnapshot": default_snapshot, "dashboardUrl": "-", "maxAutoArchiveInterval": 43200,
        "maintananceMode": False, "environment": "local",
    })


def api_routes(plane: ControlPlane) -> list[BaseRoute]:
    from controlplane.sandboxes.service import DEFAULT_SNAPSHOT

    async def config(request: Request) -> Response:
        return _config(DEFAULT_SNAPSHOT)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def no_websocket(websocket: WebSocket) -> None:
        # Refused before the handshake completes (a 403 to the client).
        await websocket.close(code=1008)

    return [
        Route("/config", config, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        *sandbox_routes.routes(plane.sandboxes, plane.urls),
        # Socket.IO lives at /api/socket.io (controlplane/events.py); other WebSockets are refused.
        WebSocketRoute("/{path:path}", no_websocket),
    ]


def build_app(plane: ControlPlane) -> Starlette:
    # Socket.IO first: its WebSockets would otherwise meet the API's refusing catch-all.
    app = Starlette(routes=[Mount(f"{API_PREFIX}/socket.io", app=plane.events.app),
                            Mount(API_PREFIX, routes=api_routes(plane))],
                    exception_handlers=errors.HANDLERS)  # type: ignore[arg-type]
    app.state.keys = plane.keys
    return app
