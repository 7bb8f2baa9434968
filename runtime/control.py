"""The runtime's control API: JSON over a Unix socket in the state directory.

`python -m runtime up` serves it; `python -m runtime create|list|stop|start|delete` call it.
Only the runtime's own user can reach the socket (mode 0600 in a 0755 directory).

    GET    /sandboxes                  list
    POST   /sandboxes                  create: {"id"?, "env"?, "limits"?, "egress"?, "public"?}
    GET    /sandboxes/{id}             one sandbox
    POST   /sandboxes/{id}/stop        stop (files stay)
    POST   /sandboxes/{id}/start       start again
    DELETE /sandboxes/{id}             stop and remove
    GET    /info                       proxy URL, domain, API key location
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from runtime.limits import Limits
from runtime.manager import Runtime, SandboxError


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "statusCode": status}, status_code=status)


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise SandboxError(400, f"request body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SandboxError(400, "request body must be a JSON object")
    return data


def build_app(runtime: Runtime, info: Callable[[], dict[str, Any]]) -> Starlette:
    def handler(fn: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def wrapped(request: Request) -> Response:
            try:
                return await fn(request)
            except SandboxError as exc:
                return _error(exc.status, exc.message)
            except (ValueError, TypeError) as exc:
                return _error(400, str(exc))
        return wrapped

    @handler
    async def list_sandboxes(request: Request) -> Response:
        return JSONResponse(runtime.list())

    @handler
    async def create(request: Request) -> Response:
        body = await _body(request)
        unknown = set(body) - {"id", "env", "limits", "egress", "public"}
        if unknown:
            raise SandboxError(400, f"unknown field(s): {', '.join(sorted(unknown))}")
        env = body.get("env") or {}
        if not isinstance(env, dict) or not all(isinstance(k, str) for k in env):
            raise SandboxError(400, "env must be an object of strings")
        if body.get("limits") is not None and not isinstance(body["limits"], dict):
            raise SandboxError(400, "limits must be an object: {cpus, memory_mib, pids}")
        limits = None
        if body.get("limits"):
            limits = Limits.from_json({**runtime.default_limits.to_json(), **body["limits"]})
        sandbox_id = body.get("id")
        if sandbox_id is not None and not isinstance(sandbox_id, str):
            raise SandboxError(400, "id must be a string")
        spec = await runtime.create(sandbox_id, env=env, limits=limits,
                                    egress=str(body.get("egress") or "none"),
                                    public=bool(body.get("public", False)))
        return JSONResponse(runtime.describe(spec), status_code=201)

    @handler
    async def get(request: Request) -> Response:
        return JSONResponse(runtime.describe(runtime.get(request.path_params["id"])))

    @handler
    async def stop(request: Request) -> Response:
        return JSONResponse(runtime.describe(await runtime.stop(request.path_params["id"])))

    @handler
    async def start(request: Request) -> Response:
        return JSONResponse(runtime.describe(await runtime.start(request.path_params["id"])))

    @handler
    async def delete(request: Request) -> Response:
        runtime.get(request.path_params["id"])
        await runtime.delete(request.path_params["id"])
        return Response(status_code=204)

    @handler
    async def get_info(request: Request) -> Response:
        return JSONResponse(info())

    return Starlette(routes=[
        Route("/info", get_info, methods=["GET"]),
        Route("/sandboxes", list_sandboxes, methods=["GET"]),
        Route("/sandboxes", create, methods=["POST"]),
        Route("/sandboxes/{id}", get, methods=["GET"]),
        Route("/sandboxes/{id}", delete, methods=["DELETE"]),
        Route("/sandboxes/{id}/stop", stop, methods=["POST"]),
        Route("/sandboxes/{id}/start", start, methods=["POST"]),
    ])
