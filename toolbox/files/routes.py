"""HTTP layer of the file-system endpoints (toolbox-api.md §5).

Thin handlers: parse the query/body, run the blocking service call in a worker thread,
shape the reply exactly as Daytona's daemon does.
"""

from __future__ import annotations

import functools
import os
import posixpath
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
from pydantic import Field
from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from toolbox.context import Daemon
from toolbox.disconnect import listen_for_http_disconnect
from toolbox.errors import Code, DaemonError, error_body, error_response
from toolbox.files import search
from toolbox.files.download import BulkDownload, FileDownload, RangeNotSatisfiable, open_for_download
from toolbox.files.paths import resolve
from toolbox.files.service import FileService
from toolbox.files.journal import UploadJournal
from toolbox.files.upload_service import UploadService
from toolbox.http import WireModel, json_response, parse_body, query_bool, query_int, query_required, query_str

T = TypeVar("T")


class ReplaceRequest(WireModel):
    files: list[str]
    pattern: str
    new_value: str = Field(alias="newValue")


class DownloadRequest(WireModel):
    paths: list[str]


async def run(func: Callable[..., T], *args: Any) -> T:
    return await anyio.to_thread.run_sync(func, *args)


async def run_while_connected(request: Request, func: Callable[..., T], *args: Any) -> T | None:
    """`func(*args, cancel=event)` in a worker thread; None if the client went away first.

    Starlette does not cancel a handler whose client disconnects, and cancelling the
    await alone would leave the thread walking: a watcher waits for `http.disconnect`
    and sets `event`, which the walk checks at every entry, so the thread stops too.
    """
    cancel = threading.Event()
    result: list[T] = []
    error: Exception | None = None

    async def watch_disconnect(scope: anyio.CancelScope) -> None:
        await listen_for_http_disconnect(request.receive)
        cancel.set()
        scope.cancel()

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(watch_disconnect, group.cancel_scope)
            try:
                call = functools.partial(func, *args, cancel=cancel)
                result.append(await anyio.to_thread.run_sync(call, abandon_on_cancel=True))
            except Exception as exc:  # re-raised below, not wrapped in an ExceptionGroup
                error = exc
            group.cancel_scope.cancel()
    finally:
        cancel.set()  # also when the handler itself is cancelled (shutdown)
    if error is not None:
        raise error
    return result[0] if result else None


def _gone() -> Response:
    return Response(status_code=499)  # the client left: nobody reads this


def _multipart_boundary(request: Request) -> bytes | None:
    """The multipart boundary; None for a body that is not multipart/form-data."""
    media_type, params = parse_options_header(request.headers.get("content-type", ""))
    if media_type != b"multipart/form-data":
        return None
    boundary = params.get(b"boundary")
    if not boundary:
        raise DaemonError(Code.BAD_REQUEST, "invalid multipart form: the Content-Type has no boundary parameter")
    return boundary


def _upload_failure(request: Request, failures: list[DaemonError], files: list[dict[str, Any]]) -> JSONResponse:
    """Daytona's bulk-upload error reply (`errors` joined into the SDK's message), which is
    also a full ErrorResponse so that generic clients see the usual envelope.

    Daytona answers 400 for any failed file; 507 says the disk filled up.
    """
    status = 507 if any(failure.status == 507 for failure in failures) else 400
    first = failures[0]
    cause = next((f for f in failures if f.status == status), first)
    body = error_body(status, "; ".join(f.message for f in failures), first.code, request.url.path, request.method,
                      cause=cause)
    body.update(errors=[f.message for f in failures], files=files)
    return JSONResponse(body, status_code=status)


def build(daemon: Daemon) -> list[BaseRoute]:
    settings = daemon.settings
    service = FileService(settings)
    journal = UploadJournal(settings.state_dir / "uploads-in-flight")
    journal.sweep()  # temp files of uploads a killed daemon left behind

    def resolve_path(raw: str) -> Path:
        return resolve(settings, raw)

    uploads = UploadService(resolve_path, journal)

    async def list_files(request: Request) -> Response:
        path = query_str(request, "path", default="") or ""
        depth = query_int(request, "depth", 1, minimum=1)
        assert depth is not None
        infos = await run_while_connected(request, service.list, path, depth)
        return json_response(infos) if infos is not None else _gone()

    async def file_info(request: Request) -> Response:
        return json_response(await run(service.info, query_required(request, "path")))

    async def create_folder(request: Request) -> Response:
        await run(service.create_folder, query_required(request, "path"), query_str(request, "mode"))
        return Response(status_code=201)

    async def delete_file(request: Request) -> Response:
        path = query_required(request, "path")
        await run(service.delete, path, query_bool(request, "recursive"))
        return Response(status_code=204)

    async def move_files(request: Request) -> Response:
        outcome = await run(
            service.move, query_required(request, "source"), query_required(request, "destination")
        )
        return json_response(outcome) if outcome else Response(status_code=200)

    async def set_permissions(request: Request) -> Response:
        await run(
            service.set_permissions,
            query_required(request, "path"),
            query_str(request, "mode") or None,
            query_str(request, "owner") or None,
            query_str(request, "group") or None,
        )
        return Response(status_code=200)

    async def find_in_files(request: Request) -> Response:
        path, pattern = query_required(request, "path"), query_required(request, "pattern")
        matches = await run_while_connected(request, search.find_in_files, settings, path, pattern)
        return json_response(matches) if matches is not None else _gone()

    async def search_files(request: Request) -> Response:
        path, pattern = query_required(request, "path"), query_required(request, "pattern")
        files = await run_while_connected(request, search.search_files, settings, path, pattern)
        return json_response({"files": files}) if files is not None else _gone()

    async def replace_in_files(request: Request) -> Response:
        body = await parse_body(request, ReplaceRequest)
        return json_response(await run(search.replace_in_files, settings, body.files, body.pattern, body.new_value))

    async def download(request: Request) -> Response | ASGIApp:
        raw = query_required(request, "path")
        fd, st = await run(open_for_download, resolve_path(raw), raw)
        name = posixpath.basename(posixpath.normpath(raw)) or raw
        try:
            return FileDownload(fd, st, name, dict(request.headers))
        except RangeNotSatisfiable as exc:
            os.close(fd)
            response = error_response(request, exc)
            response.headers["Content-Range"] = f"bytes */{exc.size}"
            return response

    async def bulk_download(request: Request) -> ASGIApp:
        body = await parse_body(request, DownloadRequest)
        if not body.paths:
            raise DaemonError(Code.BAD_REQUEST, "paths must list at least one file to download")
        return BulkDownload(body.paths, resolve_path)

    async def bulk_upload(request: Request) -> Response:
        try:
            boundary = _multipart_boundary(request)
            if boundary is None:
                raise DaemonError(Code.BAD_REQUEST, "invalid multipart form: Content-Type must be multipart/form-data")
        except DaemonError as exc:
            return _upload_failure(request, [exc], [])
        try:
            outcome = await uploads.bulk(boundary, request.stream())
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is listening any more
        if outcome.failures:
            return _upload_failure(request, outcome.failures, outcome.files)
        return JSONResponse({"files": outcome.files})

    async def upload_single(request: Request, legacy: bool) -> Response:
        raw = query_required(request, "path")
        destination = resolve_path(raw)
        boundary = _multipart_boundary(request)
        try:
            await uploads.single(destination, raw, boundary, request.stream())
        except ClientDisconnect:
            return Response(status_code=400)
        if legacy:
            return Response(status_code=200)
        name = posixpath.basename(posixpath.normpath(raw)) or raw
        return json_response({"name": name, "path": raw, "type": "file"})

    async def upload_v2(request: Request) -> Response:
        return await upload_single(request, legacy=False)

    async def upload_legacy(request: Request) -> Response:
        return await upload_single(request, legacy=True)

    return [
        Route("/files", list_files, methods=["GET"]),
        Route("/files/", list_files, methods=["GET"]),
        Route("/files", delete_file, methods=["DELETE"]),
        Route("/files/", delete_file, methods=["DELETE"]),
        Route("/files/info", file_info, methods=["GET"]),
        Route("/files/folder", create_folder, methods=["POST"]),
        Route("/files/move", move_files, methods=["POST"]),
        Route("/files/permissions", set_permissions, methods=["POST"]),
        Route("/files/find", find_in_files, methods=["GET"]),
        Route("/files/search", search_files, methods=["GET"]),
        Route("/files/replace", replace_in_files, methods=["POST"]),
        Route("/files/download", download, methods=["GET"]),
        Route("/files/bulk-download", bulk_download, methods=["POST"]),
        Route("/files/bulk-upload", bulk_upload, methods=["POST"]),
        Route("/files/upload-v2", upload_v2, methods=["POST"]),
        Route("/files/upload", upload_legacy, methods=["POST"]),
    ]
