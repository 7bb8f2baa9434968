"""`/snapshots` handlers (§4.1, §4.2) and their build logs."""

from __future__ import annotations

from collections.abc import AsyncIterator

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from controlplane.errors import BadRequest, NotFound
from controlplane.http import bool_param, int_param, principal
from controlplane.http import body as parse_body
from controlplane.sandboxes.service import SandboxService
from controlplane.snapshots.records import SnapshotRecord
from controlplane.snapshots.service import NewSnapshot, SnapshotService, build_info, is_general
from controlplane.wire import iso

GB = 1024 ** 3


class CreateSnapshot(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    name: StrictStr
    imageName: StrictStr | None = None
    entrypoint: list[StrictStr] | None = None
    buildInfo: dict[str, object] | None = None
    cpu: StrictInt | None = None
    gpu: StrictInt | None = None
    memory: StrictInt | None = None
    disk: StrictInt | None = None
    gpuType: list[StrictStr] | None = None
    regionId: StrictStr | None = None
    sandboxClass: StrictStr | None = None
    labels: dict[StrictStr, StrictStr] = Field(default_factory=dict)


def snapshot_dto(record: SnapshotRecord) -> dict[str, object]:
    out: dict[str, object] = {
        "id": record.id, "general": is_general(record), "name": record.name, "imageName": record.image_name or "",
        "state": record.state,
        # GB, as upstream reports it; the built-in snapshot's is the runtime's business.
        "size": round(record.size / GB, 3) if record.size is not None else None,
        "entrypoint": record.entrypoint, "cpu": record.cpu, "gpu": record.gpu, "mem": record.mem,
        "disk": record.disk, "errorReason": record.error_reason, "createdAt": iso(record.created_at),
        "updatedAt": iso(record.updated_at), "lastUsedAt": iso(record.last_used_at) if record.last_used_at else None,
        "sourceSandboxId": None,
    }
    if record.organization_id:
        out["organizationId"] = record.organization_id
    if record.dockerfile is not None and record.image_name is None:
        out["buildInfo"] = {"dockerfileContent": record.dockerfile, "contextHashes": [],
                            "snapshotRef": record.store_name, "createdAt": iso(record.created_at),
                            "updatedAt": iso(record.updated_at)}
    return out


def log_stream(service: SnapshotService, snapshot_id: str, follow: bool) -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        async for chunk in service.logs.read(snapshot_id, follow):
            yield chunk

    return StreamingResponse(chunks(), media_type="text/plain; charset=utf-8",
                             headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})


def routes(service: SnapshotService, sandboxes: SandboxService, api_base: str) -> list[Route]:
    async def list_snapshots(request: Request) -> Response:
        who = await principal(request)
        query = request.query_params
        page = await service.list(who, page=int_param(query.get("page") or "1", "page"),
                                  limit=int_param(query.get("limit") or "100", "limit"),
                                  name=query.get("name") or None,
                                  source_sandbox_id=query.get("sourceSandboxId") or None)
        return JSONResponse({"items": [snapshot_dto(s) for s in page.items], "total": page.total,
                             "page": page.page, "totalPages": page.total_pages})

    async def get(request: Request) -> Response:
        who = await principal(request)
        return JSONResponse(snapshot_dto(await service.get(who, request.path_params["id"])))

    async def activate(request: Request) -> Response:
        who = await principal(request)
        return JSONResponse(snapshot_dto(await service.activate(who, request.path_params["id"])))

    async def delete(request: Request) -> Response:
        who = await principal(request)
        await service.delete(who, request.path_params["id"])
        return Response(status_code=200)

    async def create(request: Request) -> Response:
        who = await principal(request)
        raw = await parse_body(request, CreateSnapshot)
        info = build_info(raw.buildInfo) if raw.buildInfo is not None else None
        if info is not None and (raw.imageName or raw.entrypoint):
            raise BadRequest("give either imageName (and entrypoint) or buildInfo, not both", "INVALID_SNAPSHOT")
        if info is None and not raw.imageName:
            raise BadRequest("give imageName or buildInfo", "INVALID_SNAPSHOT")
        if raw.gpuType:
            raise BadRequest("GPUs are not available on this server", "GPU_UNAVAILABLE")
        new = NewSnapshot(name=raw.name, image_name=raw.imageName, entrypoint=raw.entrypoint,
                          dockerfile=info[0] if info else None, context_hashes=info[1] if info else (),
                          cpu=raw.cpu, memory=raw.memory, disk=raw.disk, gpu=raw.gpu)
        return JSONResponse(snapshot_dto(await service.create(who, new)))

    async def logs_url(request: Request) -> Response:
        who = await principal(request)
        record = await service.get(who, request.path_params["id"])
        # Absolute and without a query: the SDK appends ?follow=true itself (§0.8).
        return JSONResponse({"url": f"{api_base}/snapshots/{record.id}/build-logs"})

    async def logs(request: Request) -> Response:
        who = await principal(request)
        record = await service.get(who, request.path_params["id"])
        return log_stream(service, record.id, bool_param(request.query_params.get("follow"), "follow"))

    async def sandbox_build(request: Request) -> tuple[str, str]:
        who = await principal(request)
        record = await sandboxes.get(who, request.path_params["id"])
        snapshot_id = record.extra.get("build_snapshot_id")
        if not isinstance(snapshot_id, str):
            raise NotFound(f"Sandbox {record.id} was not built from an image: it has no build logs")
        return record.id, snapshot_id

    async def sandbox_logs_url(request: Request) -> Response:
        sandbox_id, _ = await sandbox_build(request)
        return JSONResponse({"url": f"{api_base}/sandbox/{sandbox_id}/build-logs"})

    async def sandbox_logs(request: Request) -> Response:
        _, snapshot_id = await sandbox_build(request)
        return log_stream(service, snapshot_id, bool_param(request.query_params.get("follow"), "follow"))

    return [
        Route("/snapshots", list_snapshots, methods=["GET"]),
        Route("/snapshots", create, methods=["POST"]),
        Route("/snapshots/{id}", get, methods=["GET"]),
        Route("/snapshots/{id}", delete, methods=["DELETE"]),
        Route("/snapshots/{id}/activate", activate, methods=["POST"]),
        Route("/snapshots/{id}/build-logs-url", logs_url, methods=["GET"]),
        Route("/snapshots/{id}/build-logs", logs, methods=["GET"]),
        Route("/sandbox/{id}/build-logs-url", sandbox_logs_url, methods=["GET"]),
        Route("/sandbox/{id}/build-logs", sandbox_logs, methods=["GET"]),
    ]
