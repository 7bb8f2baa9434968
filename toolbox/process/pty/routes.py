"""PTY sessions: `/process/pty` REST, `/{id}/connect` and `/create-connect` WebSockets."""

from __future__ import annotations

import base64
import binascii
import json

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from toolbox.context import Daemon
from toolbox.errors import Code, DaemonError, error_response
from toolbox.http import (
    json_response,
    offered_subprotocols,
    parse_body,
    path_param,
    query_int,
    query_str,
    sdk_version_subprotocol,
)
from toolbox.openapi.registry import operation
from toolbox.process.pty.attach import DEFAULT_REPLAY, EXIT_CONTROL_PROTOCOL, serve_client
from toolbox.process.pty.manager import PtyManager
from toolbox.process.pty.models import (
    AttachQuery,
    CreateConnectQuery,
    Message,
    PtyCreateRequest,
    PtyCreateResponse,
    PtyListResponse,
    PtyResizeRequest,
    PtySessionInfo,
)
from toolbox.tasks import BackgroundTask

ENVS_PROTOCOL_PREFIX = "X-Daytona-Pty-Envs~"


def chosen_subprotocol(offered: list[str]) -> str | None:
    """The one subprotocol to echo: the exit-control capability, else a browser SDK's version
    token (browsers fail a handshake that offered protocols and got none back). Never the
    envs token: it carries values that have no business in response headers and logs."""
    if EXIT_CONTROL_PROTOCOL in offered:
        return EXIT_CONTROL_PROTOCOL
    return sdk_version_subprotocol(offered)


def decode_envs_protocol(token: str) -> dict[str, str]:
    """`X-Daytona-Pty-Envs~<base64url, unpadded, of a JSON object>` back into a dict."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        envs = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError) as exc:
        raise DaemonError(Code.BAD_REQUEST, f"invalid X-Daytona-Pty-Envs subprotocol: {exc}") from None
    if not isinstance(envs, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in envs.items()):
        raise DaemonError(Code.BAD_REQUEST, "invalid X-Daytona-Pty-Envs subprotocol: expected a JSON object of strings")
    return envs


async def deny(websocket: WebSocket, error: DaemonError) -> None:
    """Refuse the upgrade with a real HTTP status (the SDK maps 404/409 to typed errors)."""
    response = error_response(websocket, error)
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(response)
    else:  # a server without the denial extension: best effort
        await websocket.close(1008, error.message.encode()[:123].decode("utf-8", "ignore"))


def build(daemon: Daemon) -> list[BaseRoute]:
    manager = PtyManager(daemon.settings)
    reaper: list[BackgroundTask] = []

    async def start_reaper() -> None:
        reaper.append(daemon.spawn(manager.reap_idle_forever(), name="pty reaper"))

    async def stop() -> None:
        for task in reaper:
            task.cancel()
        await manager.shutdown()

    daemon.on_startup(start_reaper)
    daemon.on_shutdown(stop)

    @operation(summary="Create a PTY (the SDK uses create-connect instead)", request=PtyCreateRequest,
               response=PtyCreateResponse, status=201, errors={409: "a PTY with this id exists"})
    async def create(request: Request) -> Response:
        body = await parse_body(request, PtyCreateRequest)
        terminal = manager.create(body.id or "", body.cwd, body.envs, body.cols, body.rows, body.lazy_start)
        if not body.lazy_start:
            await manager.start(terminal)
        return json_response({"sessionId": terminal.id}, status_code=201)

    @operation(summary="PTY sessions", response=PtyListResponse)
    async def list_sessions(request: Request) -> Response:
        return json_response({"sessions": [t.info() for t in manager.list()]})

    @operation(summary="One PTY session", response=PtySessionInfo, errors={404: "no such PTY"})
    async def get_session(request: Request) -> Response:
        return json_response(manager.get(path_param(request, "session_id")).info())

    @operation(summary="Kill a PTY: its shell, jobs and session", response=Message, errors={404: "no such PTY"})
    async def delete_session(request: Request) -> Response:
        await manager.kill(path_param(request, "session_id"))
        return json_response({"message": "PTY session deleted"})

    @operation(summary="Set the terminal size (SIGWINCH)", request=PtyResizeRequest, response=PtySessionInfo,
               errors={410: "the PTY has ended or does not exist"})
    async def resize(request: Request) -> Response:
        body = await parse_body(request, PtyResizeRequest)
        terminal = manager.resize(path_param(request, "session_id"), body.cols, body.rows)
        return json_response(terminal.info())

    def attach_options(websocket: WebSocket) -> tuple[int | None, int]:
        offset = query_int(websocket, "offset", None, minimum=0)
        scrollback = query_int(websocket, "scrollback", DEFAULT_REPLAY, minimum=0)
        assert scrollback is not None
        return offset, scrollback

    @operation(summary="Attach: replay of recent output, then live output (binary frames); input frames",
               query=AttachQuery, websocket=True, errors={404: "no such PTY"})
    async def connect(websocket: WebSocket) -> None:
        try:
            terminal = manager.get(path_param(websocket, "session_id"))
            offset, scrollback = attach_options(websocket)
            if not terminal.started:
                await manager.start(terminal)  # lazy start on first attach
        except DaemonError as error:
            await deny(websocket, error)
            return
        offered = offered_subprotocols(websocket)
        exit_control = EXIT_CONTROL_PROTOCOL in offered
        await websocket.accept(subprotocol=chosen_subprotocol(offered))
        await serve_client(websocket, terminal, exit_control=exit_control, offset=offset, scrollback=scrollback)

    @operation(summary="Create a PTY and attach (envs in the X-Daytona-Pty-Envs~ subprotocol)",
               query=CreateConnectQuery, websocket=True, errors={400: "bad parameters", 409: "a PTY with this id exists"})
    async def create_connect(websocket: WebSocket) -> None:
        offered = offered_subprotocols(websocket)
        try:
            envs: dict[str, str] = {}
            for protocol in offered:
                if protocol.startswith(ENVS_PROTOCOL_PREFIX):
                    envs.update(decode_envs_protocol(protocol[len(ENVS_PROTOCOL_PREFIX):]))
            pty_id = query_str(websocket, "id", required=True) or ""
            cols = query_int(websocket, "cols", 80)
            rows = query_int(websocket, "rows", 24)
            assert cols is not None and rows is not None
            offset, scrollback = attach_options(websocket)
            terminal = manager.create(pty_id, query_str(websocket, "cwd"), envs, cols, rows)
            await manager.start(terminal)
        except DaemonError as error:
            await deny(websocket, error)
            return
        exit_control = EXIT_CONTROL_PROTOCOL in offered
        await websocket.accept(subprotocol=chosen_subprotocol(offered))
        await serve_client(websocket, terminal, exit_control=exit_control, offset=offset, scrollback=scrollback)

    return [
        # `create-connect` before `{session_id}` (toolbox-api.md §9.2).
        WebSocketRoute("/process/pty/create-connect", create_connect),
        Route("/process/pty", create, methods=["POST"]),
        Route("/process/pty", list_sessions, methods=["GET"]),
        Route("/process/pty/{session_id}", get_session, methods=["GET"]),
        Route("/process/pty/{session_id}", delete_session, methods=["DELETE"]),
        Route("/process/pty/{session_id}/resize", resize, methods=["POST"]),
        WebSocketRoute("/process/pty/{session_id}/connect", connect),
    ]
