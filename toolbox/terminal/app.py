"""The terminal's ASGI app: the page, its assets, and the daemon's PTY API under /api/pty.

`/api/pty/...` is handed, in process, to the daemon's own app as `/process/pty/...`, so the
page speaks exactly the PTY wire protocol (create-connect, connect with scrollback replay,
resize) with no second implementation. Nothing else of the Toolbox API is reachable here.
Authentication is the proxy's job: it always requires credentials for the terminal port.
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

STATIC = Path(__file__).resolve().parent / "static"
API_PREFIX = "/api/pty"


class TerminalApp:
    def __init__(self, toolbox: ASGIApp) -> None:
        self.toolbox = toolbox

        async def index(request: Request) -> Response:
            # no-store: the page is tiny, and a stale copy after an upgrade would not
            # match its assets.
            return FileResponse(STATIC / "index.html", headers={"cache-control": "no-store"})

        self.pages = Starlette(routes=[
            Route("/", index, methods=["GET", "HEAD"]),
            Mount("/assets", StaticFiles(directory=STATIC), name="assets"),
        ])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            path: str = scope["path"]
            if path == API_PREFIX or path.startswith(API_PREFIX + "/"):
                inner = dict(scope)
                inner["path"] = "/process/pty" + path[len(API_PREFIX):]
                raw = scope.get("raw_path") or path.encode()
                inner["raw_path"] = b"/process/pty" + raw[len(API_PREFIX):]
                await self.toolbox(inner, receive, send)
                return
        await self.pages(scope, receive, send)
