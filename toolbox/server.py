"""uvicorn server pieces shared by the daemon and the proxy."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import uvicorn

STOPPED_CLEANLY = "Stopped: no task left pending"


class ReadyServer(uvicorn.Server):
    """Prints one line when it is ready to serve, so supervisors and tests can wait for it,
    and one when it has stopped, saying whether any task was left pending (none should:
    every background task has an owner that ends it; tests assert that line).

    `banner` None: the app prints its own. `elsewhere`: what parts run as other processes
    (the main job's proxy) reported left pending, for the one closing line."""

    def __init__(self, config: uvicorn.Config, banner: str | None,
                 elsewhere: Callable[[], list[str]] | None = None) -> None:
        super().__init__(config)
        self.banner = banner
        self.elsewhere = elsewhere

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.banner is not None:
            print(self.banner, flush=True)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)
        print(await pending_tasks_line(self.elsewhere() if self.elsewhere else []), flush=True)


async def pending_tasks_line(elsewhere: list[str] | None = None) -> str:
    """`Stopped: no task left pending`, or which tasks still are, after the app has stopped
    (`elsewhere`: what other processes of ours left, each said as a whole)."""
    # uvicorn's lifespan task is still returning from sending "shutdown complete".
    for _ in range(3):
        await asyncio.sleep(0)
    current = asyncio.current_task()
    left = [task for task in asyncio.all_tasks() if task is not current and not task.done()]
    if not left and not elsewhere:
        return STOPPED_CLEANLY
    names = [*sorted(f"{task.get_name()} ({task.get_coro()!r:.120})" for task in left), *(elsewhere or [])]
    return f"Stopped with {len(names)} task(s) left pending: " + "; ".join(names)


def websocket_protocol(**kwargs: Any) -> asyncio.Protocol:
    """uvicorn's websockets-sansio protocol that can splice, imported on the first upgrade.

    uvicorn takes any callable as `ws` and calls it once per upgrade, so the `websockets`
    package (~2 MiB) loads only in processes that serve a WebSocket (docs/footprint.md).
    Relayed WebSockets need it: see toolbox/forward/wsserver.py.
    """
    from toolbox.forward.wsserver import SplicingWebSocketProtocol

    return SplicingWebSocketProtocol(**kwargs)


_M_ARENA_MAX = -8  # glibc's mallopt() parameter


def limit_malloc_arenas(arenas: int) -> bool:
    """Cap glibc's malloc arenas for this process only (0 leaves glibc's default).

    glibc gives each thread that allocates concurrently its own arena, up to 8 per core,
    and keeps each arena's peak: the daemon's file transfers run on up to ~40 worker
    threads, which left it at 144-191 MiB after a load test instead of 94-138 MiB with two
    (docs/hardening.md). Python threads allocate under the GIL, so fewer arenas cost no
    contention. The environment variable MALLOC_ARENA_MAX would do the same but would also
    reach every process the daemon starts for its user. Returns False where it cannot apply
    (musl has no mallopt).
    """
    if arenas <= 0:
        return False
    import ctypes  # only here: the daemon's start-up, once

    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_ARENA_MAX, arenas))
