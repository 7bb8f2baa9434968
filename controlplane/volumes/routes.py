"""`/volumes` handlers (control-plane-api.md §3.1): create answers 200, delete 200."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, StrictStr
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from controlplane.http import body, principal
from controlplane.volumes.records import VolumeRecord
from controlplane.volumes.service import VolumeService
from controlplane.wire import iso


class CreateVolume(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    name: StrictStr


def volume_dto(record: VolumeRecord) -> dict[str, object]:
    out: dict[str, object] = {
        "id": record.id, "name": record.name, "organizationId": record.organization_id, "state": record.state,
        "createdAt": iso(record.created_at), "updatedAt": iso(record.updated_at), "errorReason": None,
    }
    if record.last_used_at is not None:
        out["lastUsedAt"] = iso(record.last_used_at)
    return out


def routes(service: VolumeService) -> list[Route]:
    async def list_volumes(request: Request) -> Response:
        return JSONResponse([volume_dto(v) for v in await service.list(await principal(request))])

    async def create(request: Request) -> Response:
        who = await principal(request)
        return JSONResponse(volume_dto(await service.create(who, (await body(request, CreateVolume)).name)))

    async def get(request: Request) -> Response:
        return JSONResponse(volume_dto(await service.get(await principal(request), request.path_params["id"])))

    async def by_name(request: Request) -> Response:
        who = await principal(request)
        return JSONResponse(volume_dto(await service.by_name(who, request.path_params["name"])))

    async def delete(request: Request) -> Response:
        await service.delete(await principal(request), request.path_params["id"])
        return Response(status_code=200)

    return [
        Route("/volumes", list_volumes, methods=["GET"]),
        Route("/volumes", create, methods=["POST"]),
        Route("/volumes/by-name/{name}", by_name, methods=["GET"]),
        Route("/volumes/{id}", get, methods=["GET"]),
        Route("/volumes/{id}", delete, methods=["DELETE"]),
    ]
