"""`/secret` handlers (§5.1): create 201, delete 204; values never leave in a response."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictStr
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from controlplane.http import body, int_param, principal
from controlplane.secrets.records import SecretRecord
from controlplane.secrets.service import SecretService, placeholder
from controlplane.wire import iso


class CreateSecret(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    name: StrictStr
    value: StrictStr
    description: StrictStr | None = None
    hosts: list[StrictStr] = Field(default_factory=list)


class UpdateSecret(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    value: StrictStr | None = None
    description: StrictStr | None = None
    hosts: list[StrictStr] | None = None


def secret_dto(record: SecretRecord) -> dict[str, object]:
    out: dict[str, object] = {"id": record.id, "name": record.name, "createdAt": iso(record.created_at),
                              "placeholder": placeholder(record.id), "hosts": record.hosts,
                              "updatedAt": iso(record.updated_at)}
    if record.description is not None:
        out["description"] = record.description
    return out


def routes(service: SecretService) -> list[Route]:
    async def create(request: Request) -> Response:
        who = await principal(request)
        parsed = await body(request, CreateSecret)
        record = await service.create(who, parsed.name, parsed.value, parsed.description, parsed.hosts)
        return JSONResponse(secret_dto(record), status_code=201)

    async def paginated(request: Request) -> Response:
        who = await principal(request)
        query = request.query_params
        page = await service.list(who, cursor=query.get("cursor") or None,
                                  limit=int_param(query.get("limit") or "100", "limit"), name=query.get("name") or None,
                                  sort=query.get("sort") or "createdAt", order=query.get("order") or "desc")
        return JSONResponse({"items": [secret_dto(s) for s in page.items], "total": page.total,
                             "nextCursor": page.next_cursor})

    async def get(request: Request) -> Response:
        return JSONResponse(secret_dto(await service.get(await principal(request), request.path_params["id"])))

    async def update(request: Request) -> Response:
        who = await principal(request)
        parsed = await body(request, UpdateSecret)
        record = await service.update(who, request.path_params["id"], value=parsed.value,
                                      description=parsed.description, hosts=parsed.hosts)
        return JSONResponse(secret_dto(record))

    async def delete(request: Request) -> Response:
        await service.delete(await principal(request), request.path_params["id"])
        return Response(status_code=204)

    return [
        Route("/secret", create, methods=["POST"]),
        Route("/secret/paginated", paginated, methods=["GET"]),
        Route("/secret/{id}", get, methods=["GET"]),
        Route("/secret/{id}", update, methods=["PATCH"]),
        Route("/secret/{id}", delete, methods=["DELETE"]),
    ]
