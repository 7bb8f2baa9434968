"""`/warm-pools` handlers (§5.2): create 201, delete 204."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from controlplane.http import body, principal
from controlplane.warmpools.service import WarmPoolService, warm_pool_dto


class CreateWarmPool(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    snapshot: StrictStr
    pool: StrictInt
    target: StrictStr | None = None


class UpdateWarmPool(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    pool: StrictInt


def routes(service: WarmPoolService) -> list[Route]:
    async def list_pools(request: Request) -> Response:
        return JSONResponse([warm_pool_dto(v) for v in await service.list(await principal(request))])

    async def create(request: Request) -> Response:
        who = await principal(request)
        parsed = await body(request, CreateWarmPool)
        return JSONResponse(warm_pool_dto(await service.create(who, parsed.snapshot, parsed.pool, parsed.target)),
                            status_code=201)

    async def update(request: Request) -> Response:
        who = await principal(request)
        parsed = await body(request, UpdateWarmPool)
        return JSONResponse(warm_pool_dto(await service.update(who, request.path_params["id"], parsed.pool)))

    async def delete(request: Request) -> Response:
        await service.delete(await principal(request), request.path_params["id"])
        return Response(status_code=204)

    return [
        Route("/warm-pools", list_pools, methods=["GET"]),
        Route("/warm-pools", create, methods=["POST"]),
        Route("/warm-pools/{id}", update, methods=["PATCH"]),
        Route("/warm-pools/{id}", delete, methods=["DELETE"]),
    ]
