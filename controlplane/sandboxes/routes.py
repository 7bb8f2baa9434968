"""`/sandbox` handlers: parse, call the service, shape the answer. Status codes are the ones
the 0.226.1 client types (control-plane-api.md §0.1): create and start answer 200 with a
full Sandbox, setters whose reply the SDK ignores answer a full Sandbox too."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from controlplane.errors import BadRequest
from controlplane.http import body, bool_param, int_param, principal
from controlplane.sandboxes import dto, states
from controlplane.sandboxes.records import SandboxRecord
from controlplane.sandboxes.service import SandboxService
from controlplane.wire import iso


@dataclass(frozen=True)
class PublicUrls:
    """How clients reach the proxy (never taken from a request's Host)."""

    scheme: str
    domain: str
    port: int

    @property
    def base(self) -> str:
        default = 443 if self.scheme == "https" else 80
        return f"{self.scheme}://{self.domain}" + ("" if self.port == default else f":{self.port}")

    @property
    def toolbox(self) -> str:
        return f"{self.base}/toolbox"

    def preview(self, sandbox_id: str, port: int) -> str:
        default = 443 if self.scheme == "https" else 80
        suffix = "" if self.port == default else f":{self.port}"
        return f"{self.scheme}://{port}-{sandbox_id}.{self.domain}{suffix}"


def _fields(record: SandboxRecord, urls: PublicUrls) -> dict[str, object]:
    return dict(  # noqa: C408 -- keyword form: field names as the wire spells them
        id=record.id, organizationId=record.organization_id, name=record.name, target=record.target,
        user=record.os_user, public=record.public, networkBlockAll=record.network_block_all, cpu=record.cpu,
        gpu=record.gpu, memory=record.memory, disk=record.disk, labels=record.labels,
        toolboxProxyUrl=urls.toolbox, snapshot=record.snapshot,
        state=states.reported(record.state, record.desired_state, record.pending),
        desiredState=record.desired_state, errorReason=record.error_reason,
        recoverable=True if record.state == "error" else None,
        networkAllowList=record.network_allow_list, domainAllowList=record.domain_allow_list,
        autoStopInterval=record.auto_stop_interval, autoArchiveInterval=record.auto_archive_interval,
        autoDeleteInterval=record.auto_delete_interval, createdAt=iso(record.created_at),
        updatedAt=iso(record.updated_at), lastActivityAt=iso(record.last_activity_at),
    )


def sandbox_dto(record: SandboxRecord, urls: PublicUrls) -> dict[str, object]:
    model = dto.Sandbox(**_fields(record, urls), env=record.env,  # type: ignore[arg-type]
                        linkedSandboxId=record.linked_sandbox_id, volumes=[dto.SandboxVolumeOut(**v) for v in record.volumes])
    return model.model_dump(exclude_none=True)


def list_item_dto(record: SandboxRecord, urls: PublicUrls) -> dict[str, object]:
    """`dto.SandboxListItem`'s shape, built directly: a page of 200 must stay cheap
    (tests validate these dicts against the model and the SDK's own)."""
    fields = _fields(record, urls)
    out = {k: v for k, v in fields.items() if v is not None}
    out.update(backupState="None", sandboxClass="container", spot=False)
    return out


def _labels_query(raw: str | None) -> dict[str, str] | None:
    if not raw:
        return None
    try:
        labels = json.loads(raw)
    except ValueError:
        raise BadRequest("labels must be a JSON object of strings, e.g. {\"team\": \"a\"}", "INVALID_LABELS") from None
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise BadRequest("labels must be a JSON object of strings, e.g. {\"team\": \"a\"}", "INVALID_LABELS")
    return labels


def routes(service: SandboxService, urls: PublicUrls) -> list[Route]:
    def one(record: SandboxRecord) -> JSONResponse:
        return JSONResponse(sandbox_dto(record, urls))

    async def create(request: Request) -> Response:
        who = await principal(request)
        return one(await service.create(who, await body(request, dto.CreateSandbox, empty_ok=True)))

    async def list_sandboxes(request: Request) -> Response:
        who = await principal(request)
        query = request.query_params
        page = await service.list(
            who, labels=_labels_query(query.get("labels")),
            limit=int_param(query.get("limit", "100"), "limit"), cursor=query.get("cursor") or None,
            states_in=query.getlist("states") or None)
        return JSONResponse({"items": [list_item_dto(r, urls) for r in page.items], "nextCursor": page.next_cursor})

    async def get(request: Request) -> Response:
        return one(await service.get(await principal(request), request.path_params["id"]))

    async def delete(request: Request) -> Response:
        return one(await service.delete(await principal(request), request.path_params["id"]))

    async def start(request: Request) -> Response:
        return one(await service.start(await principal(request), request.path_params["id"]))

    async def stop(request: Request) -> Response:
        who = await principal(request)
        force = bool_param(request.query_params.get("force"), "force")
        record = await service.stop(who, request.path_params["id"], force=force)
        return Response(status_code=204) if record is None else one(record)

    async def labels(request: Request) -> Response:
        who = await principal(request)
        parsed = await body(request, dto.SandboxLabels)
        record = await service.set_labels(who, request.path_params["id"], parsed.labels)
        return JSONResponse({"labels": record.labels})

    async def archive(request: Request) -> Response:
        return one(await service.archive(await principal(request), request.path_params["id"]))

    async def recover(request: Request) -> Response:
        return one(await service.recover(await principal(request), request.path_params["id"]))

    def interval(which: str) -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request) -> Response:
            who = await principal(request)
            minutes = int_param(request.path_params["minutes"], "interval")
            return one(await service.set_interval(who, request.path_params["id"], which, minutes))

        return handler

    async def public(request: Request) -> Response:
        who = await principal(request)
        value = bool_param(request.path_params["value"], "isPublic")
        return one(await service.update(who, request.path_params["id"], public=value))

    async def resize(request: Request) -> Response:
        who = await principal(request)
        parsed = await body(request, dto.ResizeSandbox, empty_ok=True)
        if parsed.gpu:
            raise BadRequest("GPUs are not available on this server", "GPU_UNAVAILABLE")
        return one(await service.resize(who, request.path_params["id"], parsed.cpu, parsed.memory, parsed.disk))

    async def network_settings(request: Request) -> Response:
        who = await principal(request)
        parsed = await body(request, dto.UpdateNetworkSettings, empty_ok=True)
        return one(await service.set_network(who, request.path_params["id"], parsed.networkBlockAll,
                                             parsed.networkAllowList, parsed.domainAllowList))

    async def last_activity(request: Request) -> Response:
        await service.touch(await principal(request), request.path_params["id"])
        return Response(status_code=204)

    async def toolbox_proxy_url(request: Request) -> Response:
        await service.get(await principal(request), request.path_params["id"])
        return JSONResponse({"url": urls.toolbox})

    async def preview_url(request: Request) -> Response:
        record = await service.get(await principal(request), request.path_params["id"])
        port = int_param(request.path_params["port"], "port")
        if not 1 <= port <= 65535:
            raise BadRequest("port must be from 1 to 65535", "INVALID_PORT")
        return JSONResponse({"sandboxId": record.id, "url": urls.preview(record.id, port),
                             "token": record.preview_token})

    return [
        Route("/sandbox", create, methods=["POST"]),
        Route("/sandbox", list_sandboxes, methods=["GET"]),
        Route("/sandbox/{id}", get, methods=["GET"]),
        Route("/sandbox/{id}", delete, methods=["DELETE"]),
        Route("/sandbox/{id}/start", start, methods=["POST"]),
        Route("/sandbox/{id}/stop", stop, methods=["POST"]),
        Route("/sandbox/{id}/labels", labels, methods=["PUT"]),
        Route("/sandbox/{id}/archive", archive, methods=["POST"]),
        Route("/sandbox/{id}/recover", recover, methods=["POST"]),
        *[Route(f"/sandbox/{{id}}/{which}/{{minutes}}", interval(which), methods=["POST"])
          for which in ("autostop", "autoarchive", "autodelete", "autopause", "ttl")],
        Route("/sandbox/{id}/public/{value}", public, methods=["POST"]),
        Route("/sandbox/{id}/resize", resize, methods=["POST"]),
        Route("/sandbox/{id}/last-activity", last_activity, methods=["POST"]),
        Route("/sandbox/{id}/network-settings", network_settings, methods=["POST"]),
        Route("/sandbox/{id}/toolbox-proxy-url", toolbox_proxy_url, methods=["GET"]),
        Route("/sandbox/{id}/ports/{port}/preview-url", preview_url, methods=["GET"]),
    ]
