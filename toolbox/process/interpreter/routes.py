"""Stateful code interpreter: `/process/interpreter/context` REST and the `execute` WebSocket."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import anyio
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from toolbox.context import Daemon
from toolbox.disconnect import listen_for_disconnect, went_away
from toolbox.http import json_response, offered_subprotocols, parse_body, path_param, sdk_version_subprotocol
from toolbox.openapi.registry import operation
from toolbox.process.interpreter.models import (
    CreateContextRequest,
    ExecuteFrame,
    ExecuteRequest,
    InterpreterContext,
    ListContextsResponse,
    Message,
)
from toolbox.process.interpreter.service import DEFAULT_CONTEXT, DEFAULT_TIMEOUT, Execution, InterpreterService


class Rejected(Exception):
    """A bad execute request: reported only as a close frame (toolbox-api.md §10.2)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def close_reason(text: str) -> str:
    """A WebSocket close reason is at most 123 bytes of UTF-8: cut on a character boundary."""
    return text.encode("utf-8")[:123].decode("utf-8", "ignore")


def parse_execute_request(message: Mapping[str, Any]) -> tuple[str, str, dict[str, str], float]:
    """(code, context id, envs, timeout seconds; 0 = none) from the first client frame."""
    raw = message.get("text")
    if raw is None:
        raw = message.get("bytes")
    if raw is None:
        raise Rejected(1002, "failed to read first message")
    try:
        request = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise Rejected(1002, "invalid JSON payload") from None
    if not isinstance(request, dict):
        raise Rejected(1002, "invalid JSON payload")
    try:
        body = ExecuteRequest.model_validate(request)
    except ValidationError as exc:
        first = exc.errors()[0]  # in field order: code, contextId, envs, timeout
        field = str(first["loc"][0]) if first["loc"] else ""
        reason = _REASONS.get((field, first["type"])) or _REASONS.get((field, ""), "invalid request")
        raise Rejected(1008, reason) from None
    timeout = DEFAULT_TIMEOUT if body.timeout is None else body.timeout
    return body.code, body.context_id or DEFAULT_CONTEXT, body.envs or {}, timeout


# The close reasons of the SDKs' checks: per field, and per field and pydantic error type.
_REASONS = {
    ("code", ""): "code is required",
    ("contextId", ""): "contextId must be a string",
    ("envs", ""): "envs must be an object of environment variable names to string values",
    ("timeout", ""): "timeout must be a number of seconds",
    ("timeout", "greater_than_equal"): "timeout must be greater than or equal to 0",
}


async def stream_frames(websocket: WebSocket, execution: Execution) -> None:
    """Send each stored JSON line as one text frame, then close with the outcome's code."""
    pending = b""
    async for offset, chunk in execution.store.follow(0):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            await websocket.send_text(line.decode("utf-8"))
        execution.mark_sent(offset + len(chunk) - len(pending))
    code, reason = execution.close
    await websocket.close(code, reason)


def build(daemon: Daemon) -> list[BaseRoute]:
    service = InterpreterService(daemon.settings, daemon.spawn)

    async def startup() -> None:
        await anyio.to_thread.run_sync(service.remove_stale_runs)
        service.start_reaper()

    daemon.on_startup(startup)
    daemon.on_shutdown(service.shutdown)

    @operation(summary="Create an interpreter context (its own Python worker)", request=CreateContextRequest,
               body_required=False, response=InterpreterContext, errors={400: "language other than python, or bad cwd",
                       409: "too many contexts (TOOLBOX_INTERPRETER_MAX_CONTEXTS): delete one first"})
    async def create_context(request: Request) -> Response:
        body = await parse_body(request, CreateContextRequest, optional=True)
        context = await service.create_context(body.cwd, body.language)
        return json_response(context.info())

    @operation(summary="Interpreter contexts (the implicit `default` is not listed)", response=ListContextsResponse)
    async def list_contexts(request: Request) -> Response:
        return json_response({"contexts": [c.info() for c in service.list_contexts()]})

    @operation(summary="Delete a context and stop its worker", response=Message,
               errors={400: "`default` cannot be deleted", 404: "no such context"})
    async def delete_context(request: Request) -> Response:
        await service.delete_context(path_param(request, "context_id"))
        return json_response({"message": "Context deleted successfully"})

    @operation(
        summary="Run code: one JSON text frame {code, contextId?, envs?, timeout?} in, JSON frames out",
        description="Close 1000 when done, 4008 on timeout; bad requests are close frames 1002/1008 with a reason.",
        response=ExecuteFrame,
        websocket=True,
    )
    async def execute(websocket: WebSocket) -> None:
        await websocket.accept(subprotocol=sdk_version_subprotocol(offered_subprotocols(websocket)))
        try:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            code, context_id, envs, timeout = parse_execute_request(message)
            context = service.get(context_id)
            if context is None:
                raise Rejected(1008, f"context not found: {context_id}")
            if not context.active:
                raise Rejected(1008, "context is not active")
        except Rejected as rejected:
            await websocket.close(rejected.code, close_reason(rejected.reason))
            return
        execution = service.submit(context, code, envs, timeout)
        try:
            async with anyio.create_task_group() as tasks:

                async def send() -> None:
                    try:
                        await stream_frames(websocket, execution)
                    except Exception as exc:
                        if not went_away(websocket, exc):
                            raise
                        execution.abandon()
                    tasks.cancel_scope.cancel()

                async def watch() -> None:
                    # Keep reading (pings are answered by the server) to notice a client that left.
                    await listen_for_disconnect(websocket)
                    execution.abandon()
                    tasks.cancel_scope.cancel()

                tasks.start_soon(send)
                tasks.start_soon(watch)
        finally:
            execution.release()

    return [
        Route("/process/interpreter/context", create_context, methods=["POST"]),
        Route("/process/interpreter/context", list_contexts, methods=["GET"]),
        Route("/process/interpreter/context/{context_id}", delete_context, methods=["DELETE"]),
        WebSocketRoute("/process/interpreter/execute", execute),
    ]
