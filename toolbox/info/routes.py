"""HTTP layer of the info endpoints (toolbox-api.md §4)."""

from __future__ import annotations

import anyio
from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from toolbox import __version__
from toolbox.context import Daemon
from toolbox.http import WireModel, json_response, parse_body
from toolbox.info.metrics import MetricsSampler
from toolbox.info.service import InitState, update_environment


class InitRequest(WireModel):
    token: str | None = None


class UpdateEnvRequest(WireModel):
    set: dict[str, str] = Field(default_factory=dict)
    unset: list[str] = Field(default_factory=list)
    unset_value_prefix: str | None = Field(default=None, alias="unsetValuePrefix")


def build(daemon: Daemon) -> list[BaseRoute]:
    settings = daemon.settings
    sampler = MetricsSampler()
    init_state = InitState()

    async def version(request: Request) -> JSONResponse:
        return json_response({"version": f"v{__version__}"})

    async def work_dir(request: Request) -> JSONResponse:
        return json_response({"dir": str(settings.workdir)})

    async def user_home_dir(request: Request) -> JSONResponse:
        return json_response({"dir": str(settings.home)})

    async def init(request: Request) -> JSONResponse:
        body = await parse_body(request, InitRequest, optional=True)
        init_state.token = body.token
        return json_response({"message": "Auth token set and telemetry initialized successfully"})

    async def env(request: Request) -> JSONResponse:
        body = await parse_body(request, UpdateEnvRequest)
        update_environment(body.set, body.unset, body.unset_value_prefix)
        return json_response({"message": "Environment updated"})

    async def metrics(request: Request) -> JSONResponse:
        return json_response(await anyio.to_thread.run_sync(sampler.read))

    return [
        Route("/version", version, methods=["GET"]),
        Route("/work-dir", work_dir, methods=["GET"]),
        Route("/user-home-dir", user_home_dir, methods=["GET"]),
        Route("/project-dir", user_home_dir, methods=["GET"]),
        Route("/init", init, methods=["POST"]),
        Route("/env", env, methods=["POST"]),
        Route("/system/metrics", metrics, methods=["GET"]),
    ]
