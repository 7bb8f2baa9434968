"""uvicorn server that announces readiness once its socket is bound."""

from __future__ import annotations

import socket

import uvicorn


class ReadyServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, where: str) -> None:
        super().__init__(config)
        self.where = where

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            print(f"Starting proxy on {self.where}", flush=True)
