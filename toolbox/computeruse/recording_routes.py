"""HTTP routes and wire models of the screen recordings (`/computeruse/recordings`)."""

from __future__ import annotations

from pydantic import Field
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from toolbox.computeruse.recordings import Recordings
from toolbox.computeruse.x11 import X11
from toolbox.context import Daemon
from toolbox.http import WireModel, json_response, parse_body, path_param
from toolbox.openapi.registry import operation


class StartRecordingRequest(WireModel):
    label: str | None = None


class StopRecordingRequest(WireModel):
    id: str


class Recording(WireModel):
    id: str
    file_name: str = Field(alias="fileName")
    file_path: str = Field(alias="filePath")
    start_time: str = Field(alias="startTime")
    end_time: str | None = Field(default=None, alias="endTime")
    status: str
    duration_seconds: float | None = Field(default=None, alias="durationSeconds")
    size_bytes: int | None = Field(default=None, alias="sizeBytes")


class ListRecordingsResponse(WireModel):
    recordings: list[Recording]


def build_recording_routes(daemon: Daemon, x11: X11) -> list[BaseRoute]:
    recordings = Recordings(x11)
    daemon.on_shutdown(recordings.close)
    prefix = "/computeruse/recordings"

    @operation(summary="Start recording the screen (ffmpeg)", request=StartRecordingRequest, body_required=False,
               response=Recording, status=201, errors={503: "RECORDING_FFMPEG_NOT_FOUND, or no display"})
    async def start(request: Request) -> JSONResponse:
        body = await parse_body(request, StartRecordingRequest, optional=True)
        return json_response(await recordings.start(body.label), status_code=201)

    @operation(summary="Stop a recording", request=StopRecordingRequest, response=Recording, errors={404: "no such recording"})
    async def stop(request: Request) -> JSONResponse:
        body = await parse_body(request, StopRecordingRequest)
        return json_response(await recordings.stop(body.id))

    @operation(summary="Recordings made since the daemon started", response=ListRecordingsResponse)
    async def list_all(request: Request) -> JSONResponse:
        return json_response({"recordings": list(recordings.records.values())})

    @operation(summary="One recording", response=Recording, errors={404: "no such recording"})
    async def get(request: Request) -> JSONResponse:
        return json_response(recordings.get(path_param(request, "id")))

    @operation(summary="Delete a recording and its file", status=204, errors={404: "no such recording", 409: "RECORDING_STILL_ACTIVE"})
    async def delete(request: Request) -> Response:
        await recordings.delete(path_param(request, "id"))
        return Response(status_code=204)

    @operation(summary="The video file", response=bytes, errors={404: "no such recording"})
    async def download(request: Request) -> Response:
        path, name = await recordings.video(path_param(request, "id"))
        return FileResponse(path, media_type="application/octet-stream", filename=name)

    return [
        Route(f"{prefix}/start", start, methods=["POST"]),
        Route(f"{prefix}/stop", stop, methods=["POST"]),
        Route(prefix, list_all, methods=["GET"]),
        Route(f"{prefix}/{{id}}", get, methods=["GET"]),
        Route(f"{prefix}/{{id}}", delete, methods=["DELETE"]),
        Route(f"{prefix}/{{id}}/download", download, methods=["GET"]),
    ]
