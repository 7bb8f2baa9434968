"""HTTP/WebSocket layer of file watching (docs/extras.md): polled watchers and a stream."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import anyio
from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from toolbox.config import Settings
from toolbox.context import Daemon
from toolbox.disconnect import listen_for_disconnect, raise_unless_gone
from toolbox.errors import DaemonError, bad_request, error_body
from toolbox.http import WireModel, json_response, parse_body, path_param, query_bool, query_int, query_required
from toolbox.openapi.registry import operation
from toolbox.watch.service import WatchService

MAX_WAIT = 30.0
MAX_BATCH = 1000


class WatchRequest(WireModel):
    path: str = Field(min_length=1, description="File or directory to watch; relative to the work dir")
    recursive: bool = Field(default=False, description="Also watch everything below a directory")


class Watcher(WireModel):
    id: str
    path: str
    recursive: bool
    cursor: int = Field(description="Sequence number of the newest event so far")


class WatcherList(WireModel):
    watchers: list[Watcher]


class EntryStat(WireModel):
    size: int
    mode: str
    permissions: str
    is_dir: bool = Field(alias="isDir")
    mod_time: str = Field(alias="modTime")
    owner: int
    group: int


class WatchEvent(WireModel):
    seq: int
    type: Literal["create", "modify", "delete", "move", "overflow", "error"]
    path: str | None = None
    old_path: str | None = Field(default=None, alias="oldPath", description="move: where the entry was")
    is_dir: bool | None = Field(default=None, alias="isDir")
    stat: EntryStat | None = None
    timestamp: str | None = None
    dropped: int | None = Field(default=None, description="overflow: how many events were missed")
    message: str | None = None


class WatchEvents(WireModel):
    events: list[WatchEvent]
    cursor: int = Field(description="Pass as `cursor` on the next poll")
    closed: bool = Field(description="The watcher stopped (its path was deleted); no more events will come")


class EventsQuery(WireModel):
    cursor: int = Field(default=0, ge=0, description="Last sequence number seen (0: from the start)")
    timeout: int = Field(default=0, ge=0, le=int(MAX_WAIT), description="Seconds to wait for an event (long poll)")
    limit: int = Field(default=MAX_BATCH, ge=1, le=MAX_BATCH)


class StreamQuery(WireModel):
    path: str = Field(min_length=1)
    recursive: bool = False


def build(daemon: Daemon) -> list[BaseRoute]:
    settings = daemon.settings
    capacity = int(os.environ.get("TOOLBOX_WATCH_BUFFER", "4096"))
    service = WatchService(daemon.spawn, ring_capacity=max(capacity, 1))
    daemon.on_shutdown(service.close)

    @operation(
        summary="Start watching a path; poll its events with GET /watch/{id}/events",
        request=WatchRequest,
        response=Watcher,
        status=201,
        errors={400: "recursive watch of a tree with too many directories", 404: "path does not exist",
                409: "too many watchers (TOOLBOX_MAX_WATCHERS, default 16): delete one first"},
    )
    async def create(request: Request) -> JSONResponse:
        body = await parse_body(request, WatchRequest)
        watcher = await service.create(_resolve(settings, body.path), body.recursive)
        return json_response(watcher.describe(), status_code=201)

    @operation(summary="Active watchers", response=WatcherList)
    async def list_watchers(request: Request) -> JSONResponse:
        return json_response({"watchers": [w.describe() for w in service.watchers.values()]})

    @operation(
        summary="Events after `cursor`; waits up to `timeout` seconds when there are none",
        query=EventsQuery,
        response=WatchEvents,
        errors={404: "no such watcher"},
    )
    async def events(request: Request) -> JSONResponse:
        watcher = service.get(path_param(request, "id"))
        cursor = query_int(request, "cursor", 0, minimum=0) or 0
        timeout = query_int(request, "timeout", 0, minimum=0, maximum=int(MAX_WAIT)) or 0
        limit = query_int(request, "limit", MAX_BATCH, minimum=1, maximum=MAX_BATCH) or MAX_BATCH
        found, next_cursor = await watcher.ring.wait(cursor, limit, float(timeout))
        closed = watcher.ring.closed and next_cursor >= watcher.ring.last_seq
        return json_response({"events": found, "cursor": next_cursor, "closed": closed})

    @operation(summary="Stop a watcher", status=204, errors={404: "no such watcher"})
    async def delete(request: Request) -> Response:
        await service.delete(path_param(request, "id"))
        return Response(status_code=204)

    @operation(
        summary="WebSocket: one JSON text frame per event for `path` (first frame: `ready`)",
        query=StreamQuery,
        response=WatchEvent,
        websocket=True,
        errors={404: "path does not exist", 409: "too many watchers: delete one first"},
    )
    async def stream(websocket: WebSocket) -> None:
        try:
            path = _resolve(settings, query_required(websocket, "path"))
            recursive = query_bool(websocket, "recursive")
            watcher = await service.create(path, recursive, expires=False)
        except DaemonError as exc:
            # Refuse before the upgrade, with the same ErrorResponse a REST call gets.
            body = error_body(exc.status, exc.message, exc.code, websocket.url.path, "GET", cause=exc)
            await websocket.send_denial_response(JSONResponse(body, status_code=exc.status))
            return
        try:
            await websocket.accept()
            await websocket.send_json({"type": "ready", **watcher.describe()})
            async with anyio.create_task_group() as group:

                async def drain_client() -> None:
                    # Nothing is expected from the client; reading notices it going away.
                    try:
                        await listen_for_disconnect(websocket)
                    finally:
                        group.cancel_scope.cancel()

                group.start_soon(drain_client)
                cursor = 0
                while True:
                    found, cursor = await watcher.ring.wait(cursor, MAX_BATCH, MAX_WAIT)
                    for event in found:
                        await websocket.send_json(event)
                    if watcher.ring.closed and cursor >= watcher.ring.last_seq:
                        await websocket.close(1000)
                        group.cancel_scope.cancel()
                        break
        except Exception as exc:  # (anyio's task group wraps it in an ExceptionGroup)
            raise_unless_gone(websocket, exc)  # the client left mid-send
        finally:
            if watcher.id in service.watchers:
                await service.delete(watcher.id)

    return [
        WebSocketRoute("/watch/stream", stream),
        Route("/watch", create, methods=["POST"]),
        Route("/watch", list_watchers, methods=["GET"]),
        Route("/watch/{id}/events", events, methods=["GET"]),
        Route("/watch/{id}", delete, methods=["DELETE"]),
    ]


def _resolve(settings: Settings, path: str) -> Path:
    if "\x00" in path:
        raise bad_request("path contains a NUL byte")
    return settings.resolve(path)
