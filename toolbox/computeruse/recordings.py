"""Screen recordings with ffmpeg's x11grab; without ffmpeg every start is a clear 503."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anyio
from pydantic import Field
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from toolbox.computeruse.actions import display_size
from toolbox.computeruse.x11 import X11
from toolbox.context import Daemon
from toolbox.errors import Code, DaemonError, bad_request
from toolbox.http import WireModel, json_response, parse_body, path_param
from toolbox.openapi.registry import operation
from toolbox.timestamps import iso_utc

LABEL = re.compile(r"^(?!\.)[A-Za-z0-9 ._-]{1,100}$")


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


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Active:
    record: dict[str, Any]
    process: asyncio.subprocess.Process
    started: datetime


class Recordings:
    def __init__(self, x11: X11) -> None:
        self.x11 = x11
        self.directory = Path(os.environ.get("DAYTONA_RECORDINGS_DIR") or Path.home() / ".daytona" / "recordings")
        self.records: dict[str, dict[str, Any]] = {}
        self.active: dict[str, Active] = {}

    async def start(self, label: str | None) -> dict[str, Any]:
        ffmpeg = shutil.which("ffmpeg")
        if ffmpeg is None:
            raise DaemonError(Code.RECORDING_FFMPEG_NOT_FOUND, "ffmpeg is not installed: apt-get install ffmpeg to record the screen")
        if label is not None and not LABEL.match(label):
            raise bad_request("label must be 1-100 letters, digits, spaces, '.', '_' or '-', not starting with '.'")
        width, height = await display_size(self.x11)
        await anyio.to_thread.run_sync(lambda: self.directory.mkdir(parents=True, exist_ok=True))
        recording_id = uuid.uuid4().hex
        started = _now()
        name = f"{label or 'recording'}_{started.strftime('%Y%m%d_%H%M%S')}_{recording_id[:8]}.mp4"
        path = self.directory / name
        process = await asyncio.create_subprocess_exec(
            ffmpeg, "-loglevel", "error", "-y", "-f", "x11grab", "-video_size", f"{width}x{height}",
            "-framerate", "10", "-i", self.x11.display, "-c:v", "libx264", "-preset", "ultrafast",
            "-pix_fmt", "yuv420p", str(path),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        record = {"id": recording_id, "fileName": name, "filePath": str(path), "startTime": iso_utc(started), "status": "recording"}
        self.records[recording_id] = record
        self.active[recording_id] = Active(record, process, started)
        return record

    async def stop(self, recording_id: str) -> dict[str, Any]:
        active = self.active.pop(recording_id, None)
        if active is None:
            self.get(recording_id)
            raise bad_request(f"recording {recording_id!r} is not active")
        if active.process.stdin is not None:
            with contextlib.suppress(Exception):
                active.process.stdin.write(b"q")  # ffmpeg finishes the file on 'q'
                await active.process.stdin.drain()
        try:
            await asyncio.wait_for(active.process.wait(), 10)
        except asyncio.TimeoutError:
            active.process.kill()
            await active.process.wait()
        ended = _now()
        record = active.record
        record.update(status="completed", endTime=iso_utc(ended),
                      durationSeconds=round((ended - active.started).total_seconds(), 3))
        with contextlib.suppress(OSError):
            record["sizeBytes"] = (await anyio.to_thread.run_sync(os.stat, record["filePath"])).st_size
        return record

    def get(self, recording_id: str) -> dict[str, Any]:
        record = self.records.get(recording_id)
        if record is None:
            raise DaemonError(Code.NOT_FOUND, f"recording {recording_id!r} not found")
        return record

    async def delete(self, recording_id: str) -> None:
        record = self.get(recording_id)
        if recording_id in self.active:
            raise DaemonError(Code.RECORDING_STILL_ACTIVE, f"recording {recording_id!r} is still active: stop it first")
        with contextlib.suppress(FileNotFoundError):
            await anyio.to_thread.run_sync(os.unlink, record["filePath"])
        del self.records[recording_id]

    async def close(self) -> None:
        for recording_id in list(self.active):
            await self.stop(recording_id)


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
        record = recordings.get(path_param(request, "id"))
        if not await anyio.to_thread.run_sync(os.path.exists, record["filePath"]):
            raise DaemonError(Code.FILE_NOT_FOUND, f"file not found: {record['filePath']}")
        return FileResponse(record["filePath"], media_type="application/octet-stream", filename=record["fileName"])

    return [
        Route(f"{prefix}/start", start, methods=["POST"]),
        Route(f"{prefix}/stop", stop, methods=["POST"]),
        Route(prefix, list_all, methods=["GET"]),
        Route(f"{prefix}/{{id}}", get, methods=["GET"]),
        Route(f"{prefix}/{{id}}", delete, methods=["DELETE"]),
        Route(f"{prefix}/{{id}}/download", download, methods=["GET"]),
    ]
