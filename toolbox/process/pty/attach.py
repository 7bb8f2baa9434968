"""One WebSocket client attached to a PTY (Daytona's wire protocol plus replay and resume).

Protocol (toolbox-api.md §9.3-§9.5): a text control frame `connected` before any output,
output as binary frames, every client frame written verbatim to the PTY, and on exit an
optional `exited` control frame (only for clients offering `X-Daytona-Pty-Exit-Control`)
then a close frame 1000 (exit 0) or 1011 with a JSON reason.

Beyond Daytona: output is read from the PTY's OutputStore, so a client that attaches late
first gets the recent screen (a bounded tail cut at a safe point), and one that passes
`offset` resumes at exactly that byte when it is still retained.
"""

from __future__ import annotations

import json

import anyio
from starlette.websockets import WebSocket

from toolbox.disconnect import raise_unless_gone, went_away
from toolbox.process.pty.scrollback import safe_start
from toolbox.process.pty.terminal import Reader, Terminal, exit_reason

EXIT_CONTROL_PROTOCOL = "X-Daytona-Pty-Exit-Control"
# Below httpx_ws's default 64 KiB message limit (the sync SDK's client).
FRAME_SIZE = 60 * 1024
DEFAULT_REPLAY = 64 * 1024


def replay_start(terminal: Terminal, offset: int | None, scrollback: int) -> int:
    """The first output offset this client receives."""
    store = terminal.store
    if offset is not None:
        return min(max(offset, store.first_offset), store.size)
    if scrollback <= 0:
        return store.size  # live output only (Daytona's behaviour)
    tail_offset, tail = store.tail(scrollback)
    if tail_offset == 0:
        return 0  # everything since the start: nothing was cut
    return tail_offset + safe_start(tail)


def close_reason(exit_code: int) -> str:
    reason = exit_reason(exit_code)
    body: dict[str, object] = {"exitCode": exit_code}
    if reason is not None:
        body["exitReason"] = reason
    return json.dumps(body, separators=(",", ":"))


async def serve_client(
    websocket: WebSocket,
    terminal: Terminal,
    *,
    exit_control: bool,
    offset: int | None = None,
    scrollback: int = DEFAULT_REPLAY,
) -> None:
    """Run one attached client until the PTY exits or the client goes away."""
    reader = Reader(replay_start(terminal, offset, scrollback))
    terminal.attach(reader)
    try:
        connected: dict[str, object] = {"type": "control", "status": "connected"}
        if offset is not None:
            connected["offset"] = reader.offset  # where this client's byte stream starts
        await websocket.send_text(json.dumps(connected))
        async with anyio.create_task_group() as tasks:

            async def send_output() -> None:
                await _send_output(websocket, terminal, reader, exit_control)
                tasks.cancel_scope.cancel()

            async def receive_input() -> None:
                await _receive_input(websocket, terminal)
                tasks.cancel_scope.cancel()

            tasks.start_soon(send_output)
            tasks.start_soon(receive_input)
    except Exception as exc:
        raise_unless_gone(websocket, exc)  # the client went away: it only detaches, the PTY keeps running
    finally:
        terminal.detach(reader)


async def _send_output(websocket: WebSocket, terminal: Terminal, reader: Reader, exit_control: bool) -> None:
    try:
        async for chunk_offset, chunk in terminal.store.follow(reader.offset, FRAME_SIZE):
            if chunk_offset != reader.offset:
                # Fell further behind than the store retains: its screen would be corrupt.
                await websocket.close(1008, "slow consumer")
                return
            await websocket.send_bytes(chunk)
            reader.offset = chunk_offset + len(chunk)
            terminal.progressed()
        exit_code = terminal.exit_code if terminal.exit_code is not None else 137
        if exit_control:
            exited: dict[str, object] = {"type": "control", "status": "exited", "exitCode": exit_code}
            reason = exit_reason(exit_code)
            if reason is not None:
                exited["exitReason"] = reason
            await websocket.send_text(json.dumps(exited))
        await websocket.close(1000 if exit_code == 0 else 1011, close_reason(exit_code))
    except Exception as exc:
        raise_unless_gone(websocket, exc)


async def _receive_input(websocket: WebSocket, terminal: Terminal) -> None:
    while True:
        try:
            message = await websocket.receive()
        except Exception as exc:
            if not went_away(websocket, exc):
                raise
            return
        if message["type"] == "websocket.disconnect":
            return
        data = message.get("bytes")
        if data is None:
            text = message.get("text")
            data = text.encode("utf-8") if text else b""
        if not data:
            continue
        try:
            await terminal.write(data)
        except ProcessLookupError:
            continue  # exited: input is dropped, the sender closes with the exit code
