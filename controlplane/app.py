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


def api_routes(plane: ControlPlane) -> list[BaseRoute]:
    from controlplane.sandboxes.service import DEFAULT_SNAPSHOT

    async def config(request: Request) -> Response:
        return _config(DEFAULT_SNAPSHOT, plane.urls)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def no_websocket(websocket: WebSocket) -> None:
        # Refused before the handshake completes (a 403 to the client); the SDK then polls.
        await websocket.close(code=1008)

    return [
        Route("/config", config, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        *sandbox_routes.routes(plane.sandboxes, plane.urls),
        *plane.resources.routes(),
        # Socket.IO events are not served yet: the SDK falls back to polling.
        WebSocketRoute("/{path:path}", no_websocket),
    ]


def build_app(plane: ControlPlane) -> Starlette:
    app = Starlette(routes=[Mount(API_PREFIX, routes=api_routes(plane))],
                    exception_handlers=errors.HANDLERS)
    app.state.keys = plane.keys
    return app
