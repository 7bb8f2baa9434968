"""`GET /object-storage/push-access` (§4.3): where and with what the SDK uploads an image's
local files; `organizationId` is the caller's, the first part of every key it writes."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from controlplane.http import principal
from controlplane.objectstorage.service import ObjectStorage


def routes(storage: ObjectStorage) -> list[Route]:
    async def push_access(request: Request) -> Response:
        who = await principal(request)
        return JSONResponse((await storage.push_access(who.organization_id)).dto())

    return [Route("/object-storage/push-access", push_access, methods=["GET"])]
