"""The daemon's ASGI application: every API area's routes behind one error model."""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.routing import BaseRoute
from starlette.types import ASGIApp

from toolbox.config import Settings
from toolbox.context import Daemon
from toolbox.errors import EXCEPTION_HANDLERS
from toolbox.forward.routes import fast_path as forward_fast_path
from toolbox.prefix import SandboxPrefix

# One module per API area; each exposes `build(daemon) -> list[BaseRoute]`.
# Order matters only inside an area (literal routes before `{id}` routes).
AREAS = (
    "toolbox.info.routes",
    "toolbox.files.routes",
    "toolbox.process.execute.routes",
    "toolbox.process.session.routes",
    "toolbox.process.pty.routes",
    "toolbox.process.interpreter.routes",
    "toolbox.git.routes",
    "toolbox.lsp.routes",
    "toolbox.ports.routes",
    "toolbox.forward.routes",
    "toolbox.computeruse.routes",
    "toolbox.watch.routes",
    "toolbox.openapi.routes",
    "toolbox.terminal.routes",
)


def _first_segment(route: BaseRoute) -> str | None:
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return None
    segment = path.lstrip("/").split("/", 1)[0]
    return None if segment.startswith("{") else segment


def build_routes(daemon: Daemon) -> list[BaseRoute]:
    routes: list[BaseRoute] = []
    for module_name in AREAS:
        module = importlib.import_module(module_name)
        routes.extend(module.build(daemon))
    return routes


def create_app(settings: Settings) -> ASGIApp:
    daemon = Daemon(settings)
    routes = build_routes(daemon)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with daemon.running():
            yield

    app = Starlette(
        routes=routes,
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.daemon = daemon
    daemon.app = app
    segments = frozenset(s for s in map(_first_segment, routes) if s)
    return SandboxPrefix(forward_fast_path(app, daemon), settings.sandbox_id, segments)

