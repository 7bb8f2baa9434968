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
from toolbox.openapi.registry import operation


class InitRequest(WireModel):
    token: str | None = None


class UpdateEnvRequest(WireModel):
    set: dict[str, str] = Field(default_factory=dict)
    unset: list[str] = Field(default_factory=list)
    unset_value_prefix: str | None = Field(default=None, alias="unsetValuePrefix")


class Version(WireModel):
    version: str


class Dir(WireModel):
    dir: str


class Message(WireModel):
    message: str


class SystemMetrics(WireModel):
    timestamp: str
    timestamp_unix: int = Field(alias="timestampUnix")
    cpu_count: int = Field(alias="cpuCount")
    cpu_used_pct: float = Field(alias="cpuUsedPct")
    mem_used: int = Field(alias="memUsed")
    mem_total: int = Field(alias="memTotal")
    mem_cache: int = Field(alias="memCache")
    disk_used: int = Field(alias="diskUsed")
    disk_total: int = Field(alias="diskTotal")
    disk_free: int = Field(alias="diskFree")


def build(daemon: Daemon) -> list[BaseRoute]:
    settings = daemon.settings
    sampler = MetricsSampler()
    init_state = InitState()

    @operation(summary="Daemon version", response=Version)
    async def version(request: Request) -> JSONResponse:
        return json_response({"version": f"v{__version__}"})

    @operation(summary="The work dir: default for relative paths, sessions, code runs", response=Dir)
    async def work_dir(request: Request) -> JSONResponse:
        return json_response({"dir": str(settings.workdir)})

    @operation(summary="The user's home directory", response=Dir)
    async def user_home_dir(request: Request) -> JSONResponse:
        return json_response({"dir": str(settings.home)})

    @operation(summary="Store the auth token", request=InitRequest, body_required=False, response=Message)
    async def init(request: Request) -> JSONResponse:
        body = await parse_body(request, InitRequest, optional=True)
        init_state.token = body.token
        return json_response({"message": "Auth token set and telemetry initialized successfully"})

    @operation(summary="Set/unset environment variables for processes started later", request=UpdateEnvRequest, response=Message)
    async def env(request: Request) -> JSONResponse:
        body = await parse_body(request, UpdateEnvRequest)
        update_environment(body.set, body.unset, body.unset_value_prefix)
        return json_response({"message": "Environment updated"})

    @operation(summary="Live CPU, memory and disk figures", response=SystemMetrics)
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
