"""Build logs: one file per snapshot build (STATE/build-logs/<snapshot id>.log, 0600),
appended line by line while the build runs and read by any number of followers, each
in constant memory: a follower reads what is there in chunks, then waits for the writer
to say there is more, until the build has ended and it has read everything."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

from runtime.private import private_dir

CHUNK = 64 * 1024
MAX_LINE = 16 * 1024  # a longer line (a progress bar without newlines) is cut
MAX_LOG = 16 * 1024 * 1024  # a build that prints more keeps running; its log says where it stopped


class BuildLog:
    """The writer's side of one build's log."""

    def __init__(self, logs: BuildLogs, snapshot_id: str, fd: int) -> None:
        self.logs, self.snapshot_id, self.fd = logs, snapshot_id, fd
        self.changed = asyncio.Event()
        self.written = 0

    def line(self, text: str) -> None:
        # A short append to a local file: page cache, no waiting worth a thread hop per line.
        if self.written >= MAX_LOG:
            return
        data = (text[:MAX_LINE].rstrip("\n") + "\n").encode(errors="replace")
        if self.written + len(data) >= MAX_LOG:
            data = f"[build log cut at {MAX_LOG // (1024 * 1024)} MiB; the build goes on]\n".encode()
            self.written = MAX_LOG
        else:
            self.written += len(data)
        os.write(self.fd, data)
        self._wake()

    def last(self, text: str) -> None:
        """The build's closing line, written even past the cut."""
        os.write(self.fd, (text[:MAX_LINE].rstrip("\n") + "\n").encode(errors="replace"))
        self._wake()

    def _wake(self) -> None:
        # One event per write: a follower holds the one current before it read, so a write
        # after its read always wakes it, whatever the other followers do.
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    def close(self) -> None:
        os.close(self.fd)
        self.logs.active.pop(self.snapshot_id, None)
        self._wake()


class BuildLogs:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.active: dict[str, BuildLog] = {}

    def path(self, snapshot_id: str) -> Path:
        return self.root / f"{snapshot_id}.log"

    def open(self, snapshot_id: str) -> BuildLog:
        private_dir(self.root)
        fd = os.open(self.path(snapshot_id), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC,
                     0o600)
        log = BuildLog(self, snapshot_id, fd)
        self.active[snapshot_id] = log
        return log

    def remove(self, snapshot_id: str) -> None:
        try:
            self.path(snapshot_id).unlink()
        except FileNotFoundError:
            pass

    async def read(self, snapshot_id: str, follow: bool) -> AsyncIterator[bytes]:
        """The log so far; with `follow`, and while the build runs, what comes after too."""
        try:
            fd = await asyncio.to_thread(os.open, self.path(snapshot_id), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            while True:
                writer = self.active.get(snapshot_id)
                changed = writer.changed if writer is not None else None
                chunk = await asyncio.to_thread(os.read, fd, CHUNK)
                if chunk:
                    yield chunk
                    continue
                if not follow or changed is None:
                    return
                try:
                    await asyncio.wait_for(changed.wait(), 5.0)
                except TimeoutError:
                    pass
        finally:
            os.close(fd)
