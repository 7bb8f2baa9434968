"""The registry of PTY sessions: create, look up, resize, kill, and reap idle ones."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio

from toolbox.config import Settings
from toolbox.errors import Code, DaemonError
from toolbox.process.pty.terminal import Terminal

MAX_SIZE = 1000
IDLE_TIMEOUT_ENV = "TOOLBOX_PTY_IDLE_TIMEOUT"
DEFAULT_IDLE_TIMEOUT = 3600.0


def idle_timeout_from_env() -> float:
    raw = os.environ.get(IDLE_TIMEOUT_ENV, "")
    try:
        return float(raw) if raw.strip() else DEFAULT_IDLE_TIMEOUT
    except ValueError:
        return DEFAULT_IDLE_TIMEOUT


def check_size(cols: int, rows: int) -> None:
    for name, value in (("cols", cols), ("rows", rows)):
        if not 1 <= value <= MAX_SIZE:
            raise DaemonError(Code.BAD_REQUEST, f"{name} must be between 1 and {MAX_SIZE}, got {value}")


class PtyManager:
    def __init__(self, settings: Settings, idle_timeout: float | None = None) -> None:
        self.settings = settings
        # 0 disables reaping; otherwise a PTY with no client attached and no input or
        # output for this many seconds is killed.
        self.idle_timeout = idle_timeout_from_env() if idle_timeout is None else idle_timeout
        self.terminals: dict[str, Terminal] = {}

    def get(self, pty_id: str) -> Terminal:
        terminal = self.terminals.get(pty_id)
        if terminal is None:
            raise DaemonError(Code.PROCESS_NOT_FOUND, f"PTY session not found: {pty_id}")
        return terminal

    def list(self) -> list[Terminal]:
        return list(self.terminals.values())

    def create(
        self,
        pty_id: str,
        cwd: str | None,
        envs: dict[str, str] | None,
        cols: int,
        rows: int,
        lazy_start: bool = False,
    ) -> Terminal:
        """Register a PTY (not started yet): synchronous, so an id check-and-claim is atomic."""
        if not pty_id:
            raise DaemonError(Code.BAD_REQUEST, "PTY session id is required")
        if "/" in pty_id or len(pty_id) > 255:
            raise DaemonError(Code.BAD_REQUEST, "PTY session id must be at most 255 characters and contain no '/'")
        check_size(cols, rows)
        if pty_id in self.terminals:
            raise DaemonError(Code.CONFLICT, f"PTY session with ID {pty_id} already exists")
        workdir = self.settings.resolve(cwd) if cwd else self.settings.workdir
        if not workdir.is_dir():
            raise DaemonError(Code.BAD_REQUEST, f"cwd is not an existing directory: {workdir}")
        merged_envs = dict(envs or {})
        for key in merged_envs:
            if not key or "=" in key or "\x00" in key or "\x00" in merged_envs[key]:
                raise DaemonError(Code.BAD_REQUEST, f"invalid environment variable name or value: {key!r}")
        merged_envs.setdefault("TERM", "xterm-256color")
        terminal = Terminal(pty_id, Path(workdir), merged_envs, cols, rows, lazy_start=lazy_start)
        terminal.on_finished.append(self._forget)
        self.terminals[pty_id] = terminal
        return terminal

    async def start(self, terminal: Terminal) -> None:
        try:
            await terminal.start()
        except OSError as exc:
            self.terminals.pop(terminal.id, None)
            raise DaemonError(Code.INTERNAL_SERVER_ERROR, f"failed to start PTY session: {exc}") from exc

    def _forget(self, terminal: Terminal) -> None:
        if self.terminals.get(terminal.id) is terminal:
            del self.terminals[terminal.id]

    def resize(self, pty_id: str, cols: int, rows: int) -> Terminal:
        check_size(cols, rows)
        terminal = self.terminals.get(pty_id)
        if terminal is None or terminal.finished:
            # Daytona answers 410 for an unknown or ended PTY here (toolbox-api.md §9.2).
            raise DaemonError(Code.SESSION_ENDED, f"PTY session {pty_id} has ended or does not exist")
        terminal.resize(cols, rows)
        return terminal

    async def kill(self, pty_id: str) -> None:
        terminal = self.get(pty_id)
        terminal.kill()
        with anyio.move_on_after(5):
            await terminal.wait_finished()
        self._forget(terminal)

    async def shutdown(self) -> None:
        for terminal in list(self.terminals.values()):
            terminal.kill()
        for terminal in list(self.terminals.values()):
            with anyio.move_on_after(2):
                await terminal.wait_finished()

    async def reap_idle_forever(self) -> None:
        if self.idle_timeout <= 0:
            return
        interval = max(0.2, min(30.0, self.idle_timeout / 4))
        while True:
            await anyio.sleep(interval)
            now = time.monotonic()
            for terminal in list(self.terminals.values()):
                if not terminal.readers and now - terminal.last_activity >= self.idle_timeout:
                    terminal.kill()
