"""HTTP and WebSocket layer of sessions (toolbox-api.md §8), plus two additions:

* `offset=N` on `.../logs` (JSON and WebSocket): start at byte N of the raw log. JSON
  replies carry `X-Output-Offset` (the offset reached); the WebSocket's 101 response carries
  `X-Output-Offset` (where the stream starts) and its close frame (1000) the reason
  `{"offset": N}` (where it ended).
* `POST .../command/{commandId}/signal` `{"signal": "INT"}`: signal the command's processes.
"""

from __future__ import annotations

import json

import anyio
from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from toolbox.context import Daemon
from toolbox.disconnect import listen_for_disconnect, raise_unless_gone, unless_gone
from toolbox.errors import Code, DaemonError, error_response
from toolbox.http import (
    WireModel,
    json_response,
    offered_subprotocols,
    parse_body,
    path_param,
    query_bool,
    query_int,
    sdk_version_subprotocol,
)
from toolbox.openapi.registry import operation
from toolbox.process import jsonstream
from toolbox.process.groups import parse_signal
from toolbox.process.output import OutputStore, byte_chunks
from toolbox.process.session.logs import only_stream
from toolbox.process.session.service import Command, SessionManager

OFFSET_HEADER = "X-Output-Offset"
WS_FRAME = 32 * 1024


class CreateSessionRequest(WireModel):
    session_id: str = Field(alias="sessionId", min_length=1)


class SessionExecuteRequest(WireModel):
    command: str
    run_async: bool | None = Field(default=None, alias="runAsync")
    var_async: bool | None = Field(default=None, alias="async")
    suppress_input_echo: bool | None = Field(default=None, alias="suppressInputEcho")


class InputRequest(WireModel):
    data: str = Field(min_length=1)


class SignalRequest(WireModel):
    signal: str = Field(min_length=1)


class CommandInfo(WireModel):
    id: str
    command: str
    exit_code: int | None = Field(default=None, alias="exitCode", description="absent while running")


class SessionInfo(WireModel):
    session_id: str = Field(alias="sessionId")
    commands: list[CommandInfo]


class SessionExecuteResponse(WireModel):
    cmd_id: str = Field(alias="cmdId")
    output: str | None = Field(default=None, description="raw log with \\x01\\x01\\x01 / \\x02\\x02\\x02 markers")
    stdout: str | None = None
    stderr: str | None = None
    exit_code: int | None = Field(default=None, alias="exitCode")


class LogsResponse(WireModel):
    output: str
    stdout: str
    stderr: str


class LogsQuery(WireModel):
    follow: bool | None = Field(default=None, description="WebSocket only: wait for more until the command ends")
    offset: int | None = Field(default=None, ge=0, description="start at this byte of the raw log (beyond Daytona)")


class SignalQuery(WireModel):
    signal: str | None = Field(default=None, description="INT, TERM, KILL, HUP, QUIT, STOP, CONT, USR1, USR2")


class SignalResponse(WireModel):
    signal: str
    processes: int


def _log_fields(store: OutputStore, start: int, end: int) -> list[tuple[str, object]]:
    """`output` (raw, with markers), `stdout`, `stderr`: three passes over the log, each
    streamed from the store, so no copy of the whole log is ever held."""
    return [
        ("output", lambda: byte_chunks(store, start, end)),
        ("stdout", lambda: only_stream(byte_chunks(store, start, end), 1)),
        ("stderr", lambda: only_stream(byte_chunks(store, start, end), 2)),
    ]


def build(daemon: Daemon) -> list[BaseRoute]:
    manager = SessionManager(daemon.settings, daemon.spawn)
    daemon.on_startup(manager.startup)
    daemon.on_shutdown(manager.shutdown)

    @operation(summary="Create a session: one persistent shell", request=CreateSessionRequest, status=201,
               errors={400: "reserved or invalid id", 409: "session already exists"})
    async def create_session(request: Request) -> Response:
        body = await parse_body(request, CreateSessionRequest)
        await manager.create(body.session_id)
        return Response(status_code=201)

    @operation(summary="Sessions (the entrypoint session excluded)", response=list[SessionInfo])
    async def list_sessions(request: Request) -> JSONResponse:
        return json_response([s.wire() for s in manager.list()])

    @operation(summary="A session and its commands", response=SessionInfo, errors={404: "session not found"})
    async def get_session(request: Request) -> JSONResponse:
        return json_response(manager.get(path_param(request, "session_id")).wire())

    @operation(summary="The entrypoint session (empty when the daemon has no entrypoint)", response=SessionInfo)
    async def get_entrypoint(request: Request) -> JSONResponse:
        return json_response(manager.entrypoint().wire())

    @operation(summary="Delete a session, killing everything it started", status=204,
               errors={400: "the entrypoint session", 404: "session not found"})
    async def delete_session(request: Request) -> Response:
        await manager.delete(path_param(request, "session_id"))
        return Response(status_code=204)

    @operation(
        summary="Run a command in the session shell (after the ones before it); runAsync → 202 {cmdId}",
        request=SessionExecuteRequest,
        response=SessionExecuteResponse,
        errors={400: "empty command, entrypoint, or session deleted while waiting", 404: "session not found",
                410: "session shell has exited"},
    )
    async def execute(request: Request) -> Response:
        session_id = path_param(request, "session_id")
        body = await parse_body(request, SessionExecuteRequest)
        run_async = bool(body.run_async or body.var_async)
        session, command = manager.execute(
            session_id, body.command, run_async=run_async, suppress_input_echo=bool(body.suppress_input_echo)
        )
        if run_async:
            return json_response({"cmdId": command.id}, status_code=202)
        await manager.wait(session, command)
        store = command.output
        end = store.size
        fields: list[tuple[str, object]] = [("cmdId", command.id), *_log_fields(store, 0, end), ("exitCode", command.exit_code)]
        return await jsonstream.json_response(fields, size_hint=3 * end)

    @operation(summary="A command; exitCode appears once all its output is logged", response=CommandInfo,
               errors={404: "session or command not found"})
    async def get_command(request: Request) -> JSONResponse:
        _session, command = manager.command(path_param(request, "session_id"), path_param(request, "command_id"))
        return json_response(command.wire())

    @operation(summary="Write a line to a running async command's stdin", request=InputRequest, status=204,
               errors={404: "not found", 409: "synchronous or still queued command",
                       410: "command completed or session ended"})
    async def send_input(request: Request) -> Response:
        session_id = path_param(request, "session_id")
        command_id = path_param(request, "command_id")
        body = await parse_body(request, InputRequest)
        await manager.send_input(session_id, command_id, body.data)
        return Response(status_code=204)

    @operation(
        summary="Signal the processes a running command started (beyond Daytona)",
        query=SignalQuery,
        request=SignalRequest,
        body_required=False,
        response=SignalResponse,
        errors={400: "unknown signal", 404: "not found", 409: "nothing to signal yet", 410: "command completed"},
    )
    async def send_signal(request: Request) -> JSONResponse:
        session_id = path_param(request, "session_id")
        command_id = path_param(request, "command_id")
        name = request.query_params.get("signal")
        if name is None:
            name = (await parse_body(request, SignalRequest)).signal
        try:
            sig = parse_signal(name)
        except ValueError as exc:
            raise DaemonError(Code.BAD_REQUEST, str(exc)) from None
        count = manager.send_signal(session_id, command_id, sig)
        return json_response({"signal": sig.name, "processes": count})

    def logs_command(conn: Request | WebSocket) -> Command | None:
        if "command_id" not in conn.path_params:  # /entrypoint/logs
            return manager.entrypoint_command()
        return manager.command(path_param(conn, "session_id"), path_param(conn, "command_id"))[1]

    @operation(
        summary="A command's logs from `offset`; header X-Output-Offset = offset reached",
        query=LogsQuery,
        response=LogsResponse,
        errors={404: "session or command not found"},
    )
    async def logs(request: Request) -> Response:
        command = logs_command(request)
        offset = query_int(request, "offset", 0, minimum=0) or 0
        if command is None:  # no entrypoint command: valid, empty logs
            return json_response({"output": "", "stdout": "", "stderr": ""})
        store = command.output
        end = store.size
        start = min(max(offset, store.first_offset), end)
        return await jsonstream.json_response(
            _log_fields(store, start, end),
            size_hint=3 * (end - start),
            headers={OFFSET_HEADER: str(end)},
        )

    @operation(
        summary="WebSocket: raw log bytes (binary frames, stream markers) from `offset`; close 1000 "
        'with reason {"offset": end} once the command has finished',
        query=LogsQuery,
        response=bytes,
        websocket=True,
    )
    async def logs_ws(websocket: WebSocket) -> None:
        try:
            command = logs_command(websocket)
            follow = query_bool(websocket, "follow")
            offset = query_int(websocket, "offset", 0, minimum=0) or 0
        except DaemonError as exc:
            await websocket.send_denial_response(error_response(websocket, exc))
            return
        if command is None:
            await websocket.accept(
                subprotocol=sdk_version_subprotocol(offered_subprotocols(websocket)), headers=[(OFFSET_HEADER.lower().encode(), b"0")]
            )
            await websocket.close(1000, json.dumps({"offset": 0}))
            return
        store = command.output
        position = min(max(offset, store.first_offset), store.size)
        await websocket.accept(
            subprotocol=sdk_version_subprotocol(offered_subprotocols(websocket)),
            headers=[(OFFSET_HEADER.lower().encode(), str(position).encode())],
        )

        gone = False

        async def stream(scope: anyio.CancelScope) -> None:
            nonlocal position
            if follow:
                chunks = store.follow(position, WS_FRAME)
            else:
                chunks = store.read_all(position, store.size, WS_FRAME)
            async for chunk_offset, chunk in chunks:
                await websocket.send_bytes(chunk)
                position = chunk_offset + len(chunk)
            scope.cancel()

        async def watch_disconnect(scope: anyio.CancelScope) -> None:
            # The client sends nothing; a receive returns only when it goes away.
            nonlocal gone
            await listen_for_disconnect(websocket)
            gone = True
            scope.cancel()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(stream, tg.cancel_scope)
                tg.start_soon(watch_disconnect, tg.cancel_scope)
        except Exception as exc:
            raise_unless_gone(websocket, exc)
            gone = True  # the client went away mid-send
        if gone:
            return
        with unless_gone(websocket):  # it may leave between the last frame and the close
            await websocket.close(1000, json.dumps({"offset": position}))

    base = "/process/session"
    command_base = base + "/{session_id}/command/{command_id}"
    return [
        Route(base, create_session, methods=["POST"]),
        Route(base, list_sessions, methods=["GET"]),
        Route(base + "/entrypoint", get_entrypoint, methods=["GET"]),
        Route(base + "/entrypoint/logs", logs, methods=["GET"]),
        WebSocketRoute(base + "/entrypoint/logs", logs_ws),
        Route(base + "/{session_id}", get_session, methods=["GET"]),
        Route(base + "/{session_id}", delete_session, methods=["DELETE"]),
        Route(base + "/{session_id}/exec", execute, methods=["POST"]),
        Route(command_base, get_command, methods=["GET"]),
        Route(command_base + "/input", send_input, methods=["POST"]),
        Route(command_base + "/signal", send_signal, methods=["POST"]),
        Route(command_base + "/logs", logs, methods=["GET"]),
        WebSocketRoute(command_base + "/logs", logs_ws),
    ]

