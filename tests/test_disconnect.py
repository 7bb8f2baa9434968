"""toolbox/disconnect.py: a client that left is told apart from faults of ours.

Driven through Starlette's own WebSocket over an in-memory ASGI channel: the states and
the exceptions are Starlette's, not imitations.
"""

from __future__ import annotations

import asyncio

import pytest
from starlette.websockets import WebSocket, WebSocketDisconnect

from toolbox.disconnect import listen_for_disconnect, unless_gone, went_away


def _websocket(client_messages: list[dict[str, object]]) -> WebSocket:
    async def receive() -> dict[str, object]:
        return client_messages.pop(0)

    async def send(message: object) -> None:
        pass

    scope = {"type": "websocket", "path": "/", "headers": [], "query_string": b""}
    return WebSocket(scope, receive, send)


def test_faults_of_ours_are_not_a_disconnect_while_the_client_is_there() -> None:
    async def run() -> None:
        websocket = _websocket([{"type": "websocket.connect"}])
        await websocket.accept()
        assert went_away(websocket, WebSocketDisconnect(1001))
        # The closed output store (output.py), a file that shrank (download.py): real faults.
        assert not went_away(websocket, RuntimeError("output store is closed"))
        assert not went_away(websocket, OSError("file shrank while being read"))
        with pytest.raises(RuntimeError, match="output store is closed"):
            with unless_gone(websocket):
                raise RuntimeError("output store is closed")

    asyncio.run(run())


def test_what_starlette_raises_after_a_disconnect_is_one() -> None:
    async def run() -> None:
        websocket = _websocket([
            {"type": "websocket.connect"},
            {"type": "websocket.receive", "text": "ignored"},
            {"type": "websocket.disconnect", "code": 1001},
        ])
        await websocket.accept()
        await asyncio.wait_for(listen_for_disconnect(websocket), 1)  # drops what came before
        with unless_gone(websocket):
            await websocket.receive()  # Starlette: RuntimeError, the client is gone
            raise AssertionError("receive after a disconnect must raise")
        with unless_gone(websocket):
            raise OSError("the transport is closed")  # once disconnected: the client left
        await listen_for_disconnect(websocket)  # returns at once (nothing left to read)

    asyncio.run(run())


def test_a_task_groups_exception_group_is_sifted() -> None:
    # anyio wraps even the host's own exception in an ExceptionGroup: a disconnect inside
    # one is quiet, a fault next to it still propagates.
    async def run() -> None:
        websocket = _websocket([{"type": "websocket.connect"}])
        await websocket.accept()
        with unless_gone(websocket):
            raise ExceptionGroup("task group", [WebSocketDisconnect(1006)])
        with pytest.raises(ExceptionGroup) as raised:
            with unless_gone(websocket):
                raise ExceptionGroup("task group", [WebSocketDisconnect(1006), RuntimeError("output store is closed")])
        assert [str(e) for e in raised.value.exceptions] == ["output store is closed"]

    asyncio.run(run())
