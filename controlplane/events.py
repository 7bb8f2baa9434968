"""Daytona's Socket.IO events at `{api}/socket.io/`, so SDK waits end when a state changes
instead of on their 1 s polling fallback (control-plane-api.md §2.3.2).

Engine.IO 4, WebSocket transport only, as the SDKs connect. A socket authenticates with the
API key in its CONNECT packet (`auth.token`) and joins its organization's room; nothing is
read from what a client sends after that. Revoking the key closes its sockets. Events come from one place: the sandbox records
call `changed()` after every write (whoever made it: a request, reconcile, a policy), and
one consumer task turns those into `sandbox.created` (the full Sandbox) and
`sandbox.state.updated` `{sandbox, oldState, newState}` when the state a client sees moved.

The SDKs' `sandbox.state.updated` handler reads only the state, never the DTO beside it,
so a wait that ends in `error`/`build_failed` on that event alone would report "error
reason: None". A move into an error state therefore first sends the full DTO as
`sandbox.created`, the one event whose DTO the SDKs apply (errorReason included).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

import anyio
import socketio  # type: ignore[import-untyped]

from controlplane.auth import Keys, key_hash
from controlplane.sandboxes import states
from controlplane.sandboxes.records import SandboxRecord
from controlplane.sandboxes.routes import PublicUrls, sandbox_dto
from toolbox.tasks import BackgroundTask, Spawn

log = logging.getLogger("controlplane.events")

SANDBOX_CREATED = "sandbox.created"
SANDBOX_STATE_UPDATED = "sandbox.state.updated"
ERROR_STATES = frozenset({states.State.ERROR.value, states.State.BUILD_FAILED.value})
QUEUE_LIMIT = 10_000  # changes waiting to be emitted; beyond that the oldest are dropped


def room(organization_id: str) -> str:
    return f"org:{organization_id}"


class Events:
    def __init__(self, keys: Keys, urls: PublicUrls, *, spawn: Spawn) -> None:
        self.keys = keys
        self.urls = urls
        self.spawn = spawn
        # cors_allowed_origins=[]: no Origin check. Sockets authenticate with a token in
        # the CONNECT packet, never with cookies, so another site's page gains nothing.
        self.server = socketio.AsyncServer(
            async_mode="asgi", transports=["websocket"], cors_allowed_origins=[],
            max_http_buffer_size=64 * 1024, logger=False, engineio_logger=False)
        # socketio_path=None: the app is mounted at /api/socket.io, everything reaching it is ours.
        self.app = socketio.ASGIApp(self.server, socketio_path=None)
        self.server.on("connect", self._connect)
        self.server.on("disconnect", self._disconnect)
        self._keys_of: dict[str, str] = {}  # socket id -> the hash of the key it connected with
        # Engine.IO's own background work (its service task, each socket's pings) runs in
        # the control plane's task group too, so none outlives it.
        self.server.eio.start_background_task = self._start_engine_task
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[tuple[SandboxRecord, bool]] = asyncio.Queue()
        self._task: BackgroundTask | None = None
        self._shown: dict[str, str] = {}  # sandbox id -> the state last emitted
        self.emitted = 0

    def _start_engine_task(self, target: Callable[..., Coroutine[Any, Any, object]], *args: Any,
                           **kwargs: Any) -> asyncio.Task[None]:
        name = f"socket.io {getattr(target, '__qualname__', 'task')}"
        return self.spawn(target(*args, **kwargs), name=name).task

    # -- connections --------------------------------------------------------------------
    async def _connect(self, sid: str, environ: dict[str, Any], auth: Any) -> None:
        token = auth.get("token") if isinstance(auth, dict) else None
        if not isinstance(token, str) or not token:
            raise socketio.exceptions.ConnectionRefusedError(
                "Missing credentials: connect with auth={'token': '<API key>'}")
        principal = await anyio.to_thread.run_sync(self.keys.authenticate, token)
        if principal is None:
            raise socketio.exceptions.ConnectionRefusedError("Invalid credentials: the API key is unknown")
        # As upstream: an API key's socket joins its key's organization; a query's
        # organizationId (sent by JWT clients) is not consulted.
        await self.server.enter_room(sid, room(principal.organization_id))
        self._keys_of[sid] = key_hash(token)

    async def _disconnect(self, sid: str, *args: Any) -> None:
        self._keys_of.pop(sid, None)

    async def drop_key(self, key: str) -> int:
        """Close every socket that connected with `key` (just revoked): it hears nothing of
        its organization any more. Returns how many were closed."""
        digest = key_hash(key)
        sids = [sid for sid, held in self._keys_of.items() if held == digest]
        for sid in sids:
            self._keys_of.pop(sid, None)
            await self.server.disconnect(sid)
        return len(sids)

    # -- changes ------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = self.spawn(self._run(), name="emit sandbox events")

    async def close(self) -> None:
        await self.server.shutdown()  # its service task; sockets' pings end with the group
        if self._task is not None:
            self._task.cancel()
            await self._task.wait()
            self._task = None

    def seed(self, records: list[SandboxRecord]) -> None:
        """The states clients see at start, so the first event after a restart carries the
        right oldState."""
        for record in records:
            self._shown[record.id] = states.reported(record.state, record.desired_state, record.pending)

    def changed(self, record: SandboxRecord, removed: bool) -> None:
        """A record was written (or removed). Called from any thread; never blocks."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._put, record, removed)
        except RuntimeError:  # the loop closed in between
            pass

    def _put(self, record: SandboxRecord, removed: bool) -> None:
        if self._queue.qsize() >= QUEUE_LIMIT:
            self._queue.get_nowait()
        self._queue.put_nowait((record, removed))

    async def _run(self) -> None:
        while True:
            record, removed = await self._queue.get()
            try:
                await self._emit(record, removed)
            except Exception:
                log.exception("could not emit the event for sandbox %s", record.id)

    async def _emit(self, record: SandboxRecord, removed: bool) -> None:
        new = "destroyed" if removed else states.reported(record.state, record.desired_state, record.pending)
        old = self._shown.pop(record.id, None) if removed else self._shown.get(record.id)
        if not removed:
            self._shown[record.id] = new
        if old == new:
            return
        shown = replace(record, state="destroyed", desired_state="destroyed", pending=False) if removed else record
        dto = sandbox_dto(shown, self.urls)
        target = room(record.organization_id)
        if old is None and new == states.State.CREATING.value:
            await self.server.emit(SANDBOX_CREATED, dto, room=target)
        else:
            if new in ERROR_STATES:
                await self.server.emit(SANDBOX_CREATED, dto, room=target)  # why: the module doc
            await self.server.emit(SANDBOX_STATE_UPDATED, {"sandbox": dto, "oldState": old or new, "newState": new},
                                   room=target)
        self.emitted += 1

