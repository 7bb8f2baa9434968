"""Last activity per sandbox, from real traffic (requests, streamed response chunks, WebSocket
data frames; not pings), written to the registry at most once per `interval` per sandbox.

The writes run in the background, in the proxy's task group (`spawn`, toolbox/tasks.py):
`flush()` waits for those still running when the proxy stops, before the registry closes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from proxy.registry import Registry
from toolbox.tasks import BackgroundTask, Spawn


class ActivityTracker:
    def __init__(self, registry: Registry, spawn: Spawn, interval: float = 5.0) -> None:
        self.registry = registry
        self.interval = interval
        self.last_seen: dict[str, float] = {}
        self._written: dict[str, float] = {}
        self._spawn = spawn
        self._writes: list[BackgroundTask] = []

    def touch(self, sandbox_id: str) -> None:
        now = time.time()
        self.last_seen[sandbox_id] = now
        if now - self._written.get(sandbox_id, 0.0) >= self.interval:
            self._written[sandbox_id] = now
            if len(self._writes) >= 64:
                self._writes = [write for write in self._writes if not write.done()]
            try:
                write = self._spawn(self.registry.record_activity(sandbox_id, now),
                                    name=f"record activity of {sandbox_id}")
            except RuntimeError:
                return  # the proxy is stopping: nobody reads the registry's activity any more
            self._writes.append(write)

    def toucher(self, sandbox_id: str) -> Callable[[], None]:
        return lambda: self.touch(sandbox_id)

    async def flush(self) -> None:
        writes, self._writes = self._writes, []
        for write in writes:
            await write.wait()
