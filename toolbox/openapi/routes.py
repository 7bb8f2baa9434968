"""`GET /openapi.json`: the daemon describes every route it serves, generated at first ask."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from toolbox import __version__
from toolbox.context import Daemon
from toolbox.openapi.registry import operation


def build(daemon: Daemon) -> list[BaseRoute]:
    cache: dict[str, Any] = {}

    @operation(summary="This OpenAPI document, generated from the live route table", response={"type": "object"})
    async def openapi_json(request: Request) -> JSONResponse:
        # The route table is fixed once the app is built, so one rendering serves all.
        if "doc" not in cache:
            # The generator (pydantic.json_schema, ast, inspect) loads on the first ask.
            from toolbox.openapi.document import build_document

            cache["doc"] = build_document(
                request.app.router.routes, version=__version__, sandbox_id=daemon.settings.sandbox_id
            )
        return JSONResponse(cache["doc"])

    return [Route("/openapi.json", openapi_json, methods=["GET"])]
