"""A language server process spoken to with JSON-RPC 2.0 over stdio (LSP base protocol).

Everything runs as asyncio subprocess I/O: one reader task parses `Content-Length` frames,
resolves pending requests by id, and answers the server's own requests (configuration,
capability registration, progress) so that no server waits on us. Notifications such as
diagnostics are dropped: nothing here would read them, so keeping them would only grow.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections import deque
from pathlib import Path
from typing import Any

log = logging.getLogger("toolbox.lsp")

MAX_FRAME = 64 * 1024 * 1024


class RpcError(Exception):
    """The server answered with a JSON-RPC error."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class ServerGone(Exception):
    """The server process exited (or its pipes broke) before answering."""


class JsonRpcProcess:
    def __init__(self, argv: list[str], cwd: Path) -> None:
        self.argv = argv
        self.cwd = cwd
        self.process: asyncio.subprocess.Process | None = None
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._stderr_task: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()
        self.stderr_tail: deque[str] = deque(maxlen=20)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def spawn(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.argv,
            cwd=self.cwd,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group, so stop() reaches its children
            limit=MAX_FRAME,
        )
        self._reader = asyncio.create_task(self._read_loop(), name=f"lsp reader {self.argv[0]}")
        self._stderr_task = asyncio.create_task(self._drain_stderr(), name=f"lsp stderr {self.argv[0]}")

    async def request(self, method: str, params: Any, timeout: float) -> Any:
        self._next_id += 1
        request_id = self._next_id
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self._send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            with contextlib.suppress(ServerGone):
                await self._send({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": request_id}})
            raise
        finally:
            self._pending.pop(request_id, None)

    async def notify(self, method: str, params: Any) -> None:
        await self._send({"jsonrpc": "2.0", "method": method, "params": params})

    async def _send(self, message: dict[str, Any]) -> None:
        if not self.alive or self.process is None or self.process.stdin is None:
            raise ServerGone(self._gone_message())
        body = json.dumps(message, ensure_ascii=False).encode("utf-8")
        async with self._write_lock:
            try:
                self.process.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
                await self.process.stdin.drain()
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise ServerGone(self._gone_message()) from exc

    async def _read_frame(self, stdout: asyncio.StreamReader) -> dict[str, Any] | None:
        length = None
        while True:
            line = await stdout.readline()
            if not line:
                return None
            line = line.strip()
            if not line:
                break
            name, _, value = line.decode("ascii", "replace").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if length is None or length > MAX_FRAME:
            raise ValueError(f"bad frame header (Content-Length {length})")
        return json.loads(await stdout.readexactly(length))

    async def _read_loop(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        try:
            while True:
                message = await self._read_frame(self.process.stdout)
                if message is None:
                    break
                await self._dispatch(message)
        except (ValueError, asyncio.IncompleteReadError, ConnectionError) as exc:
            log.warning("language server %s: unreadable output: %s", self.argv[0], exc)
        finally:
            gone = ServerGone(self._gone_message())
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(gone)

    async def _dispatch(self, message: dict[str, Any]) -> None:
        if "method" in message and "id" in message:
            # A request from the server: answer with the neutral value for each kind.
            method = message["method"]
            result: Any = None
            if method == "workspace/configuration":
                result = [None] * len((message.get("params") or {}).get("items", []))
            elif method == "workspace/workspaceFolders":
                result = [{"uri": self.cwd.as_uri(), "name": self.cwd.name or "/"}]
            with contextlib.suppress(ServerGone):
                await self._send({"jsonrpc": "2.0", "id": message["id"], "result": result})
            return
        if "id" in message and message["id"] in self._pending:
            future = self._pending[message["id"]]
            if future.done():
                return
            if "error" in message and message["error"]:
                error = message["error"]
                future.set_exception(RpcError(int(error.get("code", 0)), str(error.get("message", "error"))))
            else:
                future.set_result(message.get("result"))

    async def _drain_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        while True:
            line = await self.process.stderr.readline()
            if not line:
                return
            self.stderr_tail.append(line.decode("utf-8", "replace").rstrip())

    def _gone_message(self) -> str:
        code = self.process.returncode if self.process else None
        tail = " | ".join(list(self.stderr_tail)[-3:])
        return f"language server {self.argv[0]} is not running (exit code {code}){': ' + tail if tail else ''}"

    async def close(self, grace: float = 3.0) -> None:
        """Kill the process group if it has not exited within `grace` seconds."""
        if self.process is None:
            return
        if self.process.stdin is not None:
            with contextlib.suppress(Exception):
                self.process.stdin.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.process.wait(), grace)
        # Also whatever it started (tsserver under typescript-language-server).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        await self.process.wait()
        for task in (self._reader, self._stderr_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
