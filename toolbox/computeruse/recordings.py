"""Screen recordings with ffmpeg's x11grab; without ffmpeg every start is a clear 503.

The service only: its HTTP routes and wire models are in `recording_routes.py`.
"""

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

from toolbox.computeruse.actions import display_size
from toolbox.computeruse.x11 import X11
from toolbox.errors import Code, DaemonError, bad_request
from toolbox.timestamps import iso_utc

LABEL = re.compile(r"^(?!\.)[A-Za-z0-9 ._-]{1,100}$")


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

    async def video(self, recording_id: str) -> tuple[str, str]:
        """(path, file name) of a recording's video file, which must still exist."""
        record = self.get(recording_id)
        if not await anyio.to_thread.run_sync(os.path.exists, record["filePath"]):
            raise DaemonError(Code.FILE_NOT_FOUND, f"file not found: {record['filePath']}")
        return record["filePath"], record["fileName"]

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
