"""The X display and the tools that drive it, each call an asyncio subprocess.

The display is `$DISPLAY` (or `:0`). `start()` launches Xvfb on it unless an X server
already answers there, so a desktop someone else runs is used as it is; `stop()` only ever
stops the Xvfb that this daemon started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from toolbox.errors import Code, DaemonError

TOOL_TIMEOUT = 15.0
SCREEN = os.environ.get("TOOLBOX_SCREEN", "1280x800x24")
_PACKAGES = {"Xvfb": "xvfb", "xdotool": "xdotool", "import": "imagemagick", "xdpyinfo": "x11-utils"}


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise DaemonError(
            Code.SERVICE_UNAVAILABLE,
            f"{name} is not installed: apt-get install {_PACKAGES.get(name, name)}",
        )
    return path


@dataclass
class ManagedProcess:
    """A process this daemon supervises (Xvfb), with a bounded tail of its output."""

    name: str
    process: asyncio.subprocess.Process | None = None
    output: deque[str] = field(default_factory=lambda: deque(maxlen=200))
    reader: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def status(self, external: bool = False) -> dict[str, Any]:
        info: dict[str, Any] = {"running": self.running or external, "priority": 100, "autoRestart": False}
        if self.running and self.process is not None:
            info["pid"] = self.process.pid
        return info


class X11:
    def __init__(self, display: str | None = None) -> None:
        self.display = display or os.environ.get("DISPLAY") or ":0"
        self.xvfb = ManagedProcess("xvfb")
        self._lock = asyncio.Lock()

    def env(self) -> dict[str, str]:
        return {**os.environ, "DISPLAY": self.display}

    async def run(self, tool: str, *args: str, stdin: bytes | None = None) -> bytes:
        """Run an X tool against the display; stdout on success, a 4xx/503 DaemonError if not."""
        argv = [_tool(tool), *args]
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env(),
            start_new_session=True,
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(stdin), TOOL_TIMEOUT)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            raise DaemonError(Code.REQUEST_TIMEOUT, f"{tool} did not finish within {TOOL_TIMEOUT:.0f} s") from None
        message = err.decode("utf-8", "replace").strip()
        if "Can't open display" in message or "unable to open display" in message.lower() or "Unable to open" in message:
            raise self.unavailable()
        if process.returncode != 0:
            raise DaemonError(Code.BAD_REQUEST, f"{tool} failed: {message or f'exit code {process.returncode}'}")
        return out

    def unavailable(self) -> DaemonError:
        return DaemonError(
            Code.SERVICE_UNAVAILABLE,
            f"Computer-use functionality is not available: no X server on display {self.display}; "
            "start one with POST /computeruse/start",
        )

    async def reachable(self) -> bool:
        if shutil.which("xdpyinfo") is None and shutil.which("xdotool") is None:
            return False
        tool = "xdpyinfo" if shutil.which("xdpyinfo") else "xdotool"
        args = () if tool == "xdpyinfo" else ("getdisplaygeometry",)
        try:
            await self.run(tool, *args)
        except DaemonError:
            return False
        return True

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        async with self._lock:
            if self.xvfb.running or await self.reachable():
                return
            xvfb = _tool("Xvfb")
            process = await asyncio.create_subprocess_exec(
                xvfb, self.display, "-screen", "0", SCREEN, "-nolisten", "tcp", "-ac",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
            self.xvfb.process = process
            self.xvfb.reader = asyncio.create_task(self._collect(self.xvfb))
            for _ in range(100):  # up to ~5 s for the server to accept clients
                if process.returncode is not None:
                    break
                if await self.reachable():
                    return
                await asyncio.sleep(0.05)
            tail = " | ".join(list(self.xvfb.output)[-3:])
            await self._terminate(self.xvfb)
            raise DaemonError(Code.SERVICE_UNAVAILABLE, f"Xvfb did not start on {self.display}: {tail or 'no output'}")

    async def stop(self) -> None:
        async with self._lock:
            await self._terminate(self.xvfb)

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    @staticmethod
    async def _collect(managed: ManagedProcess) -> None:
        assert managed.process is not None and managed.process.stdout is not None
        async for line in managed.process.stdout:
            managed.output.append(line.decode("utf-8", "replace").rstrip())

    @staticmethod
    async def _terminate(managed: ManagedProcess) -> None:
        process = managed.process
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 5)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        if managed.reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(managed.reader, 1)
        managed.process = None

    async def status(self) -> dict[str, dict[str, Any]]:
        external = not self.xvfb.running and await self.reachable()
        return {"xvfb": self.xvfb.status(external=external)}
