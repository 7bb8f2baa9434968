"""Serve the browser terminal on its own port when `TOOLBOX_TERMINAL_PORT` is set.

Like Daytona's 22222, the port is a preview port inside the sandbox: reached through the
proxy (`22222-{id}.{domain}`), which always demands credentials for it. It is off unless
configured, because on a shared host network anyone on the machine could reach it; the
local runtime and the sandbox image turn it on inside the sandbox's own network namespace.
"""

from __future__ import annotations

import asyncio
import logging
import os

import anyio
from starlette.routing import BaseRoute

from toolbox.context import Daemon
from toolbox.tasks import BackgroundTask

log = logging.getLogger("toolbox.terminal")


def build(daemon: Daemon) -> list[BaseRoute]:
    port = int(os.environ.get("TOOLBOX_TERMINAL_PORT") or 0)
    if not port:
        return []
    host = os.environ.get("TOOLBOX_TERMINAL_HOST") or "127.0.0.1"
    state: dict[str, object] = {}

    async def start() -> None:
        import uvicorn

        from toolbox.server import websocket_protocol
        from toolbox.terminal.app import TerminalApp

        app = daemon.app
        assert app is not None, "create_app sets daemon.app before startup"
        config = uvicorn.Config(
            TerminalApp(app), host=host, port=port, lifespan="off", loop="none",
            # uvicorn calls any factory as `ws` (its annotation says a Protocol class)
            http="httptools", ws=websocket_protocol, log_level="warning", access_log=False,  # type: ignore[arg-type]
            server_header=False, timeout_keep_alive=75,
        )
        server = uvicorn.Server(config)

        async def serve() -> None:
            try:
                # _serve, not serve: the daemon's own server owns the signal handlers.
                await server._serve()
            except SystemExit:  # uvicorn exits when it cannot bind
                log.warning("browser terminal not started: cannot listen on %s:%d", host, port)

        task = daemon.spawn(serve(), name="browser terminal server")
        state.update(server=server, task=task)
        while not server.started and not task.done():
            await asyncio.sleep(0.005)

    async def stop() -> None:
        server, task = state.get("server"), state.get("task")
        if server is None or not isinstance(task, BackgroundTask):
            return
        server.should_exit = True  # type: ignore[attr-defined]
        with anyio.move_on_after(5):
            await task.wait()
        task.cancel()  # (a no-op once it has ended)

    daemon.on_startup(start)
    daemon.on_shutdown(stop)
    return []
