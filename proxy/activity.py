"""Last activity per sandbox, from real traffic (requests, streamed response chunks, WebSocket
data frames; not pings), written to the registry at most once per `interval` per sandbox."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from proxy.registry import Registry


class ActivityTracker:
    def __init__(self, registry: Registry, interval: float = 5.0) -> None:
        self.registry = registry
        self.interval = interval
        self.last_seen: dict[str, float] = {}
        self._written: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def touch(self, sandbox_id: str) -> None:
        now = time.time()
        self.last_seen[sandbox_id] = now
        if now - self._written.get(sandbox_id, 0.0) >= self.interval:
            self._written[sandbox_id] = now
            task = asyncio.get_running_loop().create_task(self.registry.record_activity(sandbox_id, now))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def toucher(self, sandbox_id: str) -> Callable[[], None]:
        return lambda: self.touch(sandbox_id)

    async def flush(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
