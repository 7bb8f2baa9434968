"""`/sandbox/{id}/secrets`, `/ssh-access`, `/telemetry/metrics` (network settings are the
sandbox service's own: controlplane/sandboxes/routes.py)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, StrictStr
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from controlplane.http import body, principal
from controlplane.sandboxes.routes import PublicUrls, sandbox_dto
from controlplane.sandboxsettings.service import SandboxSettings


class SandboxSecrets(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    secrets: list[dict[StrictStr, StrictStr]]


def routes(service: SandboxSettings, urls: PublicUrls) -> list[Route]:
    async def secrets(request: Request) -> Response:
        who = await principal(request)
        parsed = await body(request, SandboxSecrets)
        return JSONResponse(sandbox_dto(await service.set_secrets(who, request.path_params["id"], parsed.secrets),
                                        urls))

    async def ssh(request: Request) -> Response:
        await service.ssh(await principal(request), request.path_params.get("id"))
        return Response(status_code=501)  # not reached

    async def metrics(request: Request) -> Response:
        who = await principal(request)
        return JSONResponse({"series": await service.metrics(who, request.path_params["id"])})

    return [
        Route("/sandbox/{id}/secrets", secrets, methods=["PUT"]),
        Route("/sandbox/ssh-access/validate", ssh, methods=["GET"]),
        Route("/sandbox/{id}/ssh-access", ssh, methods=["POST", "DELETE"]),
        Route("/sandbox/{id}/telemetry/metrics", metrics, methods=["GET"]),
    ]
