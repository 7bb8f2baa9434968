"""Telling "the client went away" apart from real faults (like Starlette's listen_for_disconnect).

A WebSocket client that leaves shows up as `WebSocketDisconnect` from a send or receive,
or, once Starlette has seen the disconnect (or we closed), as a `RuntimeError` ("Cannot
call send once a close message has been sent") or an `OSError` from the transport. Any
other `RuntimeError` or `OSError` is a fault of ours (a closed output store, a file that
shrank) and must not be swallowed as if the client had left.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from starlette.types import Receive
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState


def went_away(websocket: WebSocket, exc: BaseException) -> bool:
    """Whether `exc` is how a send or receive on `websocket` reports a client that left."""
    if isinstance(exc, WebSocketDisconnect):
        return True
    gone = WebSocketState.DISCONNECTED in (websocket.client_state, websocket.application_state)
    return gone and isinstance(exc, (RuntimeError, OSError))


def raise_unless_gone(websocket: WebSocket, exc: BaseException) -> None:
    """Re-raise what in `exc` is not the client going away. A task group's ExceptionGroup
    (anyio wraps even its host's own exception in one) is sifted: the faults in it go on."""
    if isinstance(exc, BaseExceptionGroup):
        faults = exc.subgroup(lambda e: not isinstance(e, BaseExceptionGroup) and not went_away(websocket, e))
        if faults is not None:
            raise faults from None
    elif not went_away(websocket, exc):
        raise exc


@contextmanager
def unless_gone(websocket: WebSocket) -> Iterator[None]:
    """Ends the block quietly when the client went away; anything else propagates."""
    try:
        yield
    except Exception as exc:
        raise_unless_gone(websocket, exc)


async def listen_for_disconnect(websocket: WebSocket) -> None:
    """Returns once the client has gone away (what it sends meanwhile is dropped)."""
    with unless_gone(websocket):
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass


async def listen_for_http_disconnect(receive: Receive) -> None:
    """Returns once an HTTP client has gone away (body bytes read meanwhile are dropped, so
    call it only once the request body was consumed, or when it does not matter)."""
    while (await receive())["type"] != "http.disconnect":
        pass
