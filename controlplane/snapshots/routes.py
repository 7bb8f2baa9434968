"""`/snapshots` handlers (§4.1) and the object-storage push-access call image contexts need."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from controlplane.http import int_param, principal
from controlplane.snapshots.service import Snapshot, SnapshotService
from controlplane.wire import iso


def snapshot_dto(snapshot: Snapshot) -> dict[str, object]:
    return {
        "id": snapshot.id, "general": snapshot.general, "name": snapshot.name, "imageName": snapshot.image_name,
        "state": snapshot.state, "size": None, "entrypoint": None, "cpu": snapshot.cpu, "gpu": snapshot.gpu,
        "mem": snapshot.mem, "disk": snapshot.disk, "errorReason": None, "createdAt": iso(snapshot.created_at),
        "updatedAt": iso(snapshot.updated_at), "lastUsedAt": None, "sourceSandboxId": None,
    }


def routes(service: SnapshotService) -> list[Route]:
    async def list_snapshots(request: Request) -> Response:
        await principal(request)
        query = request.query_params
        page = service.list(page=int_param(query.get("page") or "1", "page"),
                            limit=int_param(query.get("limit") or "100", "limit"),
                            name=query.get("name") or None, source_sandbox_id=query.get("sourceSandboxId") or None)
        return JSONResponse({"items": [snapshot_dto(s) for s in page.items], "total": page.total,
                             "page": page.page, "totalPages": page.total_pages})

    async def get(request: Request) -> Response:
        await principal(request)
        return JSONResponse(snapshot_dto(service.get(request.path_params["id"])))

    async def activate(request: Request) -> Response:
        await principal(request)
        return JSONResponse(snapshot_dto(service.activate(request.path_params["id"])))

    async def delete(request: Request) -> Response:
        await principal(request)
        service.delete(request.path_params["id"])
        return Response(status_code=200)

    async def create(request: Request) -> Response:
        await principal(request)
        service.create()
        return Response(status_code=500)  # not reached: create raises

    return [
        Route("/snapshots", list_snapshots, methods=["GET"]),
        Route("/snapshots", create, methods=["POST"]),
        Route("/snapshots/{id}", get, methods=["GET"]),
        Route("/snapshots/{id}", delete, methods=["DELETE"]),
        Route("/snapshots/{id}/activate", activate, methods=["POST"]),
        Route("/object-storage/push-access", create, methods=["GET"]),
    ]
