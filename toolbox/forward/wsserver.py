"""uvicorn's websockets-sansio protocol, able to hand its connection over to a splice.

Every WebSocket scope it serves offers the `toolbox.websocket.splice` extension. An app
that relays the WebSocket elsewhere (the daemon's `/proxy/{port}` route, the preview
proxy) opens the upstream itself and, instead of `websocket.accept`, sends

    {"type": "toolbox.websocket.splice", "splice": Splice, "response": <raw 101 head>}

From then on this protocol forwards raw bytes (`splice.py`) instead of parsing frames.
Apps that accept the WebSocket themselves (PTY, logs, watch) are served as before.

Imported on the first WebSocket upgrade (`toolbox.server.websocket_protocol`), so the
`websockets` package loads only in processes that serve one.
"""

from __future__ import annotations

from uvicorn._types import ASGISendEvent
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

from toolbox.forward.splice import SPLICE, Splice


class SplicingWebSocketProtocol(WebSocketsSansIOProtocol):
    splice: Splice | None = None

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        if not self.handshake_complete:  # a valid upgrade: the scope exists and goes to the app
            self.scope["extensions"][SPLICE] = {}

    async def send(self, message: ASGISendEvent) -> None:
        if message["type"] != SPLICE:
            await super().send(message)
            if message["type"] == "websocket.http.response.body" and not message.get("more_body", False):
                # A denial response (404 for an unknown PTY, 401 at the proxy) is a complete
                # answer to the upgrade; uvicorn's sansio protocol does not count it as one
                # and logs "ASGI callable returned without completing handshake." for every
                # refused upgrade (fixed upstream by Kludex/uvicorn#3138, not yet released).
                self.handshake_complete = True
            return
        splice: Splice = message["splice"]  # type: ignore[typeddict-item]
        if self.disconnected or self.transport.is_closing():  # the client left while the upstream answered
            splice.refuse()
            return
        if self.handshake_complete or self.initial_response is not None:
            raise RuntimeError("A WebSocket can only be spliced in place of 'websocket.accept'.")
        # The ASGI side is over: uvicorn must neither answer the handshake nor frame anything.
        self.handshake_complete = True
        self.close_sent = True
        self.splice = splice
        splice.start(self.transport, message["response"])  # type: ignore[typeddict-item]

    def data_received(self, data: bytes) -> None:
        if self.splice is not None:
            self.splice.from_client(data)
        else:
            super().data_received(data)

    def pause_writing(self) -> None:
        if self.splice is not None:
            self.splice.client_paused()
        else:
            super().pause_writing()

    def resume_writing(self) -> None:
        if self.splice is not None:
            self.splice.client_resumed()
        else:
            super().resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.splice is not None:
            self.splice.client_lost()

    def shutdown(self) -> None:
        if self.splice is not None:
            self.splice.shutdown()
        else:
            super().shutdown()
