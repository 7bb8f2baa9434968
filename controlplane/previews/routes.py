"""Signed preview URL and signing-key handlers (§2.4)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from controlplane.http import int_param, principal
from controlplane.previews.service import PreviewService
from controlplane.sandboxes.routes import PublicUrls


def routes(service: PreviewService, urls: PublicUrls) -> list[Route]:
    async def signed(request: Request) -> Response:
        who = await principal(request)
        port = int_param(request.path_params["port"], "port")
        raw = request.query_params.get("expiresInSeconds")
        expires = int_param(raw, "expiresInSeconds") if raw else None
        made = await service.sign(who, request.path_params["id"], port, expires)
        return JSONResponse({"sandboxId": made.sandbox_id, "port": made.port, "token": made.token,
                             "url": urls.preview(made.token, made.port)})

    async def expire(request: Request) -> Response:
        who = await principal(request)
        port = int_param(request.path_params["port"], "port")
        await service.expire(who, request.path_params["id"], port, request.path_params["token"])
        return Response(status_code=200)

    async def signing_key(request: Request) -> Response:
        return JSONResponse(await service.signing_key(await principal(request), request.path_params["id"]))

    async def rotate(request: Request) -> Response:
        who = await principal(request)
        return JSONResponse(await service.signing_key(who, request.path_params["id"], rotate=True))

    return [
        Route("/sandbox/{id}/ports/{port}/signed-preview-url", signed, methods=["GET"]),
        Route("/sandbox/{id}/ports/{port}/signed-preview-url/{token}/expire", expire, methods=["POST"]),
        Route("/sandbox/{id}/signing-key", signing_key, methods=["GET"]),
        Route("/sandbox/{id}/signing-key/rotate", rotate, methods=["POST"]),
    ]
