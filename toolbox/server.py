"""uvicorn server pieces shared by the daemon and the proxy."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvicorn


class ReadyServer(uvicorn.Server):
    """Prints one line when it is ready to serve, so supervisors and tests can wait for it."""

    def __init__(self, config: uvicorn.Config, banner: str) -> None:
        super().__init__(config)
        self.banner = banner

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            print(self.banner, flush=True)


def websocket_protocol(**kwargs: Any) -> asyncio.Protocol:
    """uvicorn's websockets-sansio protocol that can splice, imported on the first upgrade.

    uvicorn takes any callable as `ws` and calls it once per upgrade, so the `websockets`
    package (~2 MiB) loads only in processes that serve a WebSocket (docs/footprint.md).
    Relayed WebSockets need it: see toolbox/forward/wsserver.py.
    """
    from toolbox.forward.wsserver import SplicingWebSocketProtocol

    return SplicingWebSocketProtocol(**kwargs)
