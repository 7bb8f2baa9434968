"""HTTP layer of the ports endpoints (toolbox-api.md §13)."""

from __future__ import annotations

import anyio
from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from toolbox.context import Daemon
from toolbox.errors import Code, DaemonError
from toolbox.http import WireModel, json_response
from toolbox.openapi.registry import operation
from toolbox.ports.service import MAX_PORT, MIN_PORT, listening_ports


class PortList(WireModel):
    ports: list[int]


class IsPortInUseResponse(WireModel):
    is_in_use: bool = Field(alias="isInUse")


def _port(request: Request) -> int:
    raw = request.path_params.get("port", "")
    try:
        port = int(raw)
    except ValueError:
        raise DaemonError(
            Code.BAD_REQUEST, f"invalid port: must be a number between {MIN_PORT} and {MAX_PORT}, got {raw!r}"
        ) from None
    if not MIN_PORT <= port <= MAX_PORT:
        raise DaemonError(Code.BAD_REQUEST, f"port out of range: must be between {MIN_PORT} and {MAX_PORT}")
    return port


def build(daemon: Daemon) -> list[BaseRoute]:
    @operation(summary="Ports with a listening TCP socket (IPv4 or IPv6)", response=PortList)
    async def get_ports(request: Request) -> JSONResponse:
        ports = await anyio.to_thread.run_sync(listening_ports)
        return json_response(PortList(ports=sorted(ports)))

    @operation(
        summary="Whether a TCP socket listens on the port",
        response=IsPortInUseResponse,
        errors={400: f"port is not a number between {MIN_PORT} and {MAX_PORT}"},
    )
    async def is_port_in_use(request: Request) -> JSONResponse:
        port = _port(request)
        ports = await anyio.to_thread.run_sync(listening_ports)
        return json_response(IsPortInUseResponse(isInUse=port in ports))

    return [
        Route("/port", get_ports, methods=["GET"]),
        Route("/port/{port}/in-use", is_port_in_use, methods=["GET"]),
    ]
