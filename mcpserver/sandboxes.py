"""What the MCP tools do, without MCP: calls of the control plane (`/api`) and of a
sandbox's toolbox (through the proxy) with one API key, and results shaped for a model.

Every failure is a `ToolFailure` whose message says what went wrong and what to do next;
`mcpserver/server.py` turns it into an MCP tool error (`isError: true`). Nothing here
trusts a sandbox: file content and command output are only ever text handed back, cut to
size, and binary content is refused.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import shlex
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from mcpserver import shaping
from mcpserver.connection import Connection

LANGUAGES = ("python", "typescript", "javascript")
LANGUAGE_LABEL = "code-toolbox-language"
READ_LIMIT_LINES = 200
LOG_PAGE = 16_000
MAX_LIST = 500
MAX_MATCHES = 200
MAX_DOWNLOAD = 100_000
MAX_UPLOAD = 10 * 1024 * 1024
# A JSON answer of the toolbox bigger than this is not read (a search of a huge tree).
MAX_JSON = 16 * 1024 * 1024
SESSION_PREFIX = "mcp-"
# Of /process/execute's JSON answer, at most this much is held, whatever the command printed.
EXECUTE_HEAD = 256 * 1024
EXECUTE_TAIL = 256 * 1024
_EXECUTE_PREFIX = re.compile(rb'^\{"exitCode":(-?\d+),"result":"')


class ToolFailure(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(body, dict):
        for key in ("message", "error", "errors"):
            if body.get(key):
                value = body[key]
                return "; ".join(map(str, value)) if isinstance(value, list) else str(value)
    return str(body)[:500]


def _failure(response: httpx.Response, action: str, sandbox_id: str | None = None) -> ToolFailure:
    status = response.status_code
    message = _message(response)
    if status == 401:
        return ToolFailure(f"{action} failed: the API key was refused ({message}). Check DAYTONA_API_KEY "
                           "(or the Bearer key of the MCP endpoint); `python -m runtime api-key create` makes one.")
    if response.headers.get("x-proxy-error") == "sandbox-not-found" or (
            status == 404 and sandbox_id is not None and "sandbox" in message.lower()):
        return ToolFailure(f"{action} failed: sandbox {sandbox_id} was not found, or is not started. "
                           "list_sandboxes shows your sandboxes and their states.")
    return ToolFailure(f"{action} failed ({status}): {message}")


def _check(response: httpx.Response, action: str, sandbox_id: str | None = None) -> None:
    if response.status_code >= 400:
        raise _failure(response, action, sandbox_id)


def _dump(value: Any) -> str:
    return json.dumps(value, indent=1, ensure_ascii=False)


def _sandbox_summary(sandbox: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "name", "state", "cpu", "memory", "disk", "labels", "public", "autoStopInterval", "createdAt",
            "errorReason")
    return {k: sandbox[k] for k in keys if sandbox.get(k) not in (None, "", {})}


class SandboxTools:
    """The tool set over one `Connection` (one API key, one organization)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    # ---- transport ---------------------------------------------------------------------

    @asynccontextmanager
    async def _api(self) -> AsyncIterator[httpx.AsyncClient]:
        async with self.connection.api_client() as client:
            try:
                yield client
            except httpx.TimeoutException:
                raise ToolFailure(f"the control plane at {self.connection.api_url} did not answer in time; "
                                  "try again, or check that the main job is not overloaded") from None
            except httpx.TransportError as exc:
                raise ToolFailure(f"cannot reach the control plane at {self.connection.api_url} ({exc}); is the "
                                  "main job running (./scripts/start) and DAYTONA_API_URL right?") from None

    @asynccontextmanager
    async def _toolbox(self, sandbox_id: str, timeout: float | None = 60) -> AsyncIterator[httpx.AsyncClient]:
        _check_id(sandbox_id)
        async with self.connection.toolbox_client(sandbox_id, timeout=timeout) as client:
            try:
                yield client
            except httpx.TimeoutException:
                raise ToolFailure(f"sandbox {sandbox_id} did not answer in time") from None
            except httpx.TransportError as exc:
                raise ToolFailure(f"cannot reach sandbox {sandbox_id} through the proxy at "
                                  f"{self.connection.proxy_url} ({exc}); is the main job running?") from None

    @asynccontextmanager
    async def _websocket(self, sandbox_id: str, path: str) -> AsyncIterator[ClientConnection]:
        _check_id(sandbox_id)
        url, headers, kwargs = self.connection.toolbox_websocket(sandbox_id, path)
        try:
            async with ws_connect(url, additional_headers=headers, open_timeout=30, max_size=2**24,
                                  **kwargs) as websocket:
                yield websocket
        except InvalidStatus as exc:
            response = exc.response
            reason = response.body.decode("utf-8", "replace")[:300] if response.body else ""
            if response.headers.get("x-proxy-error") == "sandbox-not-found":
                raise ToolFailure(f"sandbox {sandbox_id} was not found, or is not started. "
                                  "list_sandboxes shows your sandboxes and their states.") from None
            raise ToolFailure(f"the sandbox refused the connection ({response.status_code}): {reason}") from None
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            raise ToolFailure(f"cannot reach sandbox {sandbox_id} through the proxy at "
                              f"{self.connection.proxy_url} ({exc}); is the main job running?") from None

    # ---- sandboxes ---------------------------------------------------------------------

    async def create_sandbox(self, name: str | None, language: str, env: dict[str, str] | None,
                             labels: dict[str, str] | None, cpu: int | None, memory: int | None,
                             auto_stop_minutes: int | None, public: bool) -> str:
        if language not in LANGUAGES:
            raise ToolFailure(f"language must be one of {', '.join(LANGUAGES)}, got {language!r}")
        body: dict[str, Any] = {"labels": {**(labels or {}), LANGUAGE_LABEL: language}, "public": public}
        for key, value in (("name", name), ("env", env), ("cpu", cpu), ("memory", memory),
                           ("autoStopInterval", auto_stop_minutes)):
            if value is not None:
                body[key] = value
        async with self._api() as api:
            response = await api.post("/sandbox", json=body, timeout=300)
        _check(response, "create_sandbox")
        sandbox = response.json()
        return _dump({**_sandbox_summary(sandbox),
                      "next": "use this id as sandbox_id in the other tools; destroy_sandbox when done"})

    async def list_sandboxes(self) -> str:
        async with self._api() as api:
            response = await api.get("/sandbox", params={"limit": 100})
        _check(response, "list_sandboxes")
        body = response.json()
        items = body.get("items", body) if isinstance(body, dict) else body
        summary = [_sandbox_summary(s) for s in items]
        text = _dump(summary)
        if isinstance(body, dict) and body.get("nextCursor"):
            text += "\n[the 100 newest are shown]"
        return text

    async def destroy_sandbox(self, sandbox_id: str) -> str:
        _check_id(sandbox_id)
        async with self._api() as api:
            response = await api.delete(f"/sandbox/{sandbox_id}", timeout=120)
        _check(response, "destroy_sandbox", sandbox_id)
        return f"sandbox {sandbox_id} destroyed"

    async def preview_link(self, sandbox_id: str, port: int, expires_in_seconds: int) -> str:
        _check_id(sandbox_id)
        if not 1 <= port <= 65535:
            raise ToolFailure(f"port must be from 1 to 65535, got {port}")
        async with self._api() as api:
            plain = await api.get(f"/sandbox/{sandbox_id}/ports/{port}/preview-url")
            _check(plain, "preview_link", sandbox_id)
            signed = await api.get(f"/sandbox/{sandbox_id}/ports/{port}/signed-preview-url",
                                   params={"expiresInSeconds": expires_in_seconds})
            _check(signed, "preview_link", sandbox_id)
        preview, link = plain.json(), signed.json()
        return _dump({
            "url": link["url"],
            "expiresInSeconds": expires_in_seconds,
            "note": "open url as is (the token is part of it). Without it, use plainUrl with the header "
                    "X-Daytona-Preview-Token: token (public sandboxes need no token). Something must listen on "
                    f"port {port} inside the sandbox (start it with start_command).",
            "plainUrl": preview["url"],
            "token": preview["token"],
        })

    # ---- commands ----------------------------------------------------------------------

    async def execute_command(self, sandbox_id: str, command: str, cwd: str | None, timeout: int) -> str:
        if not command.strip():
            raise ToolFailure("command is empty")
        body: dict[str, Any] = {"command": command, "timeout": timeout}
        if cwd:
            body["cwd"] = cwd
        # The output may be huge: only its head and tail are kept while it streams by.
        kept = shaping.HeadTail(EXECUTE_HEAD, EXECUTE_TAIL)
        async with self._toolbox(sandbox_id, timeout=timeout + 10) as toolbox:
            async with toolbox.stream("POST", "/process/execute", json=body) as response:
                if response.status_code == 408:
                    raise ToolFailure(f"the command ran longer than {timeout} s and was killed. For servers and "
                                      "long jobs use start_command and read_command_logs; or pass a larger timeout.")
                if response.status_code >= 400:
                    await response.aread()
                    _check(response, "execute_command", sandbox_id)
                async for chunk in response.aiter_bytes():
                    kept.feed(chunk)
        exit_code, output, tail = _execute_output(kept)
        note = "redirect the output to a file (cmd > /tmp/out.txt 2>&1) and page through it with read_file"
        if tail is None:
            return f"exit code: {exit_code}\n{shaping.cut(output, how_to_read_more=note)}"
        return f"exit code: {exit_code}\n{shaping.cut_huge(output, tail, kept.total, how_to_read_more=note)}"

    async def run_code(self, sandbox_id: str, code: str, context_id: str | None, timeout: int) -> str:
        if not code.strip():
            raise ToolFailure("code is empty")
        request: dict[str, Any] = {"code": code, "timeout": timeout}
        if context_id:
            request["contextId"] = context_id
        stdout: list[str] = []
        stderr: list[str] = []
        error: dict[str, Any] | None = None
        async with self._websocket(sandbox_id, "/process/interpreter/execute") as websocket:
            await websocket.send(json.dumps(request))
            try:
                async for frame in websocket:
                    chunk = json.loads(frame)
                    kind = chunk.get("type")
                    if kind == "stdout":
                        stdout.append(chunk.get("text", ""))
                    elif kind == "stderr":
                        stderr.append(chunk.get("text", ""))
                    elif kind == "error":
                        error = chunk
            except ConnectionClosed:
                pass
            close = websocket.close_code, websocket.close_reason
        if close[0] == 4008:
            raise ToolFailure(f"the code ran longer than {timeout} s and was interrupted (the context keeps its "
                              "state unless it had to be killed); pass a larger timeout, or use start_command")
        if close[0] not in (1000, None):
            raise ToolFailure(f"run_code failed: {close[1] or 'the interpreter closed the connection'} "
                              f"(close code {close[0]})")
        parts = []
        if stdout:
            parts.append(shaping.cut("".join(stdout), how_to_read_more="print less, or write to a file and "
                                                                       "use read_file"))
        if stderr:
            parts.append("stderr:\n" + shaping.cut("".join(stderr), limit=shaping.MAX_TEXT // 2))
        if error is not None:
            parts.append(f"error: {error.get('name')}: {error.get('value')}\n"
                         + shaping.cut(error.get("traceback", ""), limit=shaping.MAX_TEXT // 2))
        return "\n".join(parts) if parts else "(no output)"

    async def create_code_context(self, sandbox_id: str, cwd: str | None) -> str:
        async with self._toolbox(sandbox_id) as toolbox:
            response = await toolbox.post("/process/interpreter/context", json={"cwd": cwd} if cwd else {})
        _check(response, "create_code_context", sandbox_id)
        context = response.json()
        return _dump({"contextId": context["id"], "cwd": context.get("cwd"),
                      "note": "pass contextId to run_code; variables persist within it"})

    async def start_command(self, sandbox_id: str, command: str, cwd: str | None) -> str:
        if not command.strip():
            raise ToolFailure("command is empty")
        session_id = SESSION_PREFIX + secrets.token_hex(6)
        script = f"cd {shlex.quote(cwd)} && {command}" if cwd else command
        async with self._toolbox(sandbox_id) as toolbox:
            created = await toolbox.post("/process/session", json={"sessionId": session_id})
            _check(created, "start_command", sandbox_id)
            response = await toolbox.post(f"/process/session/{session_id}/exec",
                                          json={"command": script, "runAsync": True})
            if response.status_code >= 400:
                await toolbox.delete(f"/process/session/{session_id}")
            _check(response, "start_command", sandbox_id)
        command_id = response.json()["cmdId"]
        return _dump({"sessionId": session_id, "commandId": command_id,
                      "next": "read_command_logs with these ids (offset 0 first, then the nextOffset it returns); "
                              "stop_command to stop it"})

    async def read_command_logs(self, sandbox_id: str, session_id: str, command_id: str, offset: int,
                                wait_seconds: float, max_bytes: int) -> str:
        _check_name(session_id, "session_id")
        _check_name(command_id, "command_id")
        if offset < 0:
            raise ToolFailure("offset must be 0 or more (the nextOffset of the previous read)")
        max_bytes = max(1000, min(max_bytes, 100_000))
        path = f"/process/session/{session_id}/command/{command_id}"
        async with self._toolbox(sandbox_id) as toolbox:
            status = await toolbox.get(path)
        if status.status_code == 404:
            raise ToolFailure(f"no command {command_id} in session {session_id} of sandbox {sandbox_id} "
                              "(start_command returns both ids)")
        _check(status, "read_command_logs", sandbox_id)
        raw = bytearray()
        start = offset
        follow = wait_seconds > 0
        async with self._websocket(sandbox_id, f"{path}/logs?offset={offset}&follow={str(follow).lower()}") as ws:
            # Where the stream starts: the log keeps a bounded tail, so an old offset moves up.
            header = ws.response.headers.get("x-output-offset") if ws.response else None
            if header is not None and header.isdigit():
                start = int(header)
            with anyio.move_on_after(wait_seconds if follow else 30):
                try:
                    async for frame in ws:
                        raw += frame if isinstance(frame, bytes) else frame.encode()
                        if len(raw) > max_bytes:
                            break
                except ConnectionClosed:
                    pass
        end = shaping.page_end(bytes(raw), max_bytes)
        streams = shaping.demux(bytes(raw[:end]))
        async with self._toolbox(sandbox_id) as toolbox:
            status = await toolbox.get(path)
        exit_code = status.json().get("exitCode") if status.status_code == 200 else None
        more = end < len(raw)
        result: dict[str, Any] = {
            "running": exit_code is None,
            "exitCode": exit_code,
            "nextOffset": start + end,
            "stdout": streams.stdout,
        }
        if streams.stderr:
            result["stderr"] = streams.stderr
        if start > offset:
            result["skipped"] = f"bytes {offset}-{start} are no longer kept"
        if more:
            result["note"] = f"more output: call again with offset {start + end}"
        elif exit_code is None:
            result["note"] = f"still running: call again with offset {start + end} (wait_seconds to wait for output)"
        return _dump(result)

    async def stop_command(self, sandbox_id: str, session_id: str, command_id: str, signal: str) -> str:
        _check_name(session_id, "session_id")
        _check_name(command_id, "command_id")
        async with self._toolbox(sandbox_id) as toolbox:
            response = await toolbox.post(f"/process/session/{session_id}/command/{command_id}/signal",
                                          json={"signal": signal})
            if response.status_code == 410:
                return f"command {command_id} had already finished"
            _check(response, "stop_command", sandbox_id)
            with anyio.move_on_after(5):
                while True:
                    state = await toolbox.get(f"/process/session/{session_id}/command/{command_id}")
                    if state.status_code != 200 or state.json().get("exitCode") is not None:
                        break
                    await anyio.sleep(0.1)
        sent = response.json()
        exit_code = state.json().get("exitCode") if state.status_code == 200 else None
        ended = f"it exited with code {exit_code}" if exit_code is not None else (
            "it is still running after 5 s: stop_command again with signal KILL")
        return (f"sent {sent.get('signal', 'SIG' + signal)} to {sent.get('processes', 0)} process(es); {ended}. "
                "Its logs stay readable with read_command_logs.")

    # ---- files -------------------------------------------------------------------------

    async def list_files(self, sandbox_id: str, path: str, depth: int) -> str:
        if depth < 1:
            raise ToolFailure("depth must be 1 or more")
        async with self._toolbox(sandbox_id) as toolbox:
            response = await toolbox.get("/files", params={"path": path, "depth": depth})
        _check(response, "list_files", sandbox_id)
        entries = response.json()
        lines = [f"{'d' if e.get('isDir') else '-'} {e.get('permissions', '')} {e.get('size', 0):>10} "
                 f"{e.get('modifiedAt') or ''} {e.get('path') or e.get('name')}{'/' if e.get('isDir') else ''}"
                 for e in entries[:MAX_LIST]]
        if not lines:
            return f"{path} is empty"
        if len(entries) > MAX_LIST:
            lines.append(f"[{len(entries) - MAX_LIST} more entries not shown: list a subdirectory or use a "
                         "smaller depth]")
        return "\n".join(lines)

    async def get_file_info(self, sandbox_id: str, path: str) -> str:
        async with self._toolbox(sandbox_id) as toolbox:
            response = await toolbox.get("/files/info", params={"path": path})
        _check(response, "get_file_info", sandbox_id)
        return _dump(response.json())

    async def create_folder(self, sandbox_id: str, path: str, mode: str) -> str:
        async with self._toolbox(sandbox_id) as toolbox:
            response = await toolbox.post("/files/folder", params={"path": path, "mode": mode})
        _check(response, "create_folder", sandbox_id)
        return f"folder {path} exists (mode {mode})"

    async def delete_file(self, sandbox_id: str, path: str, recursive: bool) -> str:
        async with self._toolbox(sandbox_id) as toolbox:
            response = await toolbox.delete("/files", params={"path": path, "recursive": str(recursive).lower()})
        _check(response, "delete_file", sandbox_id)
        return f"deleted {path}"

    async def move_file(self, sandbox_id: str, source: str, destination: str) -> str:
        async with self._toolbox(sandbox_id) as toolbox:
            response = await toolbox.post("/files/move", params={"source": source, "destination": destination})
        _check(response, "move_file", sandbox_id)
        return f"moved {source} to {destination}"

    async def upload_file(self, sandbox_id: str, path: str, content: str, encoding: str) -> str:
        if encoding == "text":
            data = content.encode("utf-8")
        elif encoding == "base64":
            try:
                data = base64.b64decode(content, validate=True)
            except (binascii.Error, ValueError):
                raise ToolFailure("content is not valid base64 (encoding='base64')") from None
        else:
            raise ToolFailure(f"encoding must be 'text' or 'base64', got {encoding!r}")
        if len(data) > MAX_UPLOAD:
            raise ToolFailure(f"content is {len(data)} bytes; at most {MAX_UPLOAD} go through MCP. Fetch big files "
                              "inside the sandbox instead (execute_command with curl, git_clone)")
        async with self._toolbox(sandbox_id) as toolbox:
            response = await toolbox.post("/files/upload-v2", params={"path": path}, content=data,
                                          headers={"content-type": "application/octet-stream"})
        _check(response, "upload_file", sandbox_id)
        return f"wrote {len(data)} bytes to {path}"

    @asynccontextmanager
    async def _download(self, sandbox_id: str, path: str) -> AsyncIterator[httpx.Response]:
        async with self._toolbox(sandbox_id) as toolbox:
            async with toolbox.stream("GET", "/files/download", params={"path": path}) as response:
                if response.status_code >= 400:
                    await response.aread()
                    _check(response, f"reading {path}", sandbox_id)
                yield response

    async def download_file(self, sandbox_id: str, path: str) -> str:
        async with self._download(sandbox_id, path) as response:
            size = response.headers.get("content-length")
            data = bytearray()
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) > MAX_DOWNLOAD:
                    break
        total = int(size) if size and size.isdigit() else None
        if shaping.looks_binary(bytes(data)):
            raise ToolFailure(shaping.binary_refusal(path, total, bytes(data[:16])))
        if len(data) > MAX_DOWNLOAD:
            end = shaping.safe_utf8_end(bytes(data[:MAX_DOWNLOAD]))
            text = bytes(data[:end]).decode("utf-8", "replace")
            lines = text.count("\n")
            return (text + f"\n[file cut at {end} of {total if total is not None else 'more than ' + str(end)} "
                           f"bytes; read the rest with read_file offset={lines + 1}]")
        return bytes(data).decode("utf-8", "replace")

    async def read_file(self, sandbox_id: str, path: str, offset: int, limit: int) -> str:
        if offset < 1:
            raise ToolFailure("offset is a line number and starts at 1")
        if limit < 1:
            raise ToolFailure("limit must be 1 or more")
        limit = min(limit, 2000)
        lines: list[str] = []
        number = 0
        pending = b""
        more = False
        checked = False
        budget = shaping.MAX_TEXT * 2
        async with self._download(sandbox_id, path) as response:
            size = response.headers.get("content-length")
            async for chunk in response.aiter_bytes():
                if not checked:
                    checked = True
                    if shaping.looks_binary(chunk):
                        total = int(size) if size and size.isdigit() else None
                        raise ToolFailure(shaping.binary_refusal(path, total, chunk[:16]))
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for raw in complete:
                    number += 1
                    if number < offset:
                        continue
                    if len(lines) >= limit or budget <= 0:
                        more = True
                        break
                    line = shaping.clip_line(raw.decode("utf-8", "replace"))
                    budget -= len(line)
                    lines.append(f"{number:>6}\t{line}")
                if more:
                    break
            else:
                if pending:
                    number += 1
                    if number >= offset and len(lines) < limit and budget > 0:
                        lines.append(f"{number:>6}\t{shaping.clip_line(pending.decode('utf-8', 'replace'))}")
                    elif number >= offset:
                        more = True
        if not lines:
            if number == 0:
                return f"{path} is empty"
            return f"{path} has {number} lines; offset {offset} is past its end"
        last = offset + len(lines) - 1
        footer = (f"\n[lines {offset}-{last}; more follow: read_file offset={last + 1}]" if more
                  else f"\n[lines {offset}-{last} of {number}; end of file]")
        return "\n".join(lines) + footer

    async def search_files(self, sandbox_id: str, pattern: str, path: str) -> str:
        if not pattern:
            raise ToolFailure("pattern is empty (it is literal text, not a regular expression)")
        async with self._toolbox(sandbox_id, timeout=120) as toolbox:
            async with toolbox.stream("GET", "/files/find", params={"path": path, "pattern": pattern}) as response:
                if response.status_code >= 400:
                    await response.aread()
                    _check(response, "search_files", sandbox_id)
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_JSON:
                        raise ToolFailure(f"the search of {path} for {pattern!r} found too much to return; "
                                          "search a smaller directory or a more specific pattern")
        matches = json.loads(body)
        if not matches:
            return f"no line under {path} contains {pattern!r}"
        lines = [f"{m['file']}:{m['line']}: {shaping.clip_line(m['content'].strip(), 300)}"
                 for m in matches[:MAX_MATCHES]]
        text = "\n".join(lines)
        if len(matches) > MAX_MATCHES:
            files = len({m["file"] for m in matches})
            text += (f"\n[{len(matches)} matches in {files} files, the first {MAX_MATCHES} shown: search a "
                     "subdirectory or a more specific pattern]")
        return shaping.cut(text, how_to_read_more="search a subdirectory or a more specific pattern")

    async def git_clone(self, sandbox_id: str, url: str, path: str, branch: str | None, commit_id: str | None,
                        username: str | None, password: str | None, depth: int | None) -> str:
        body: dict[str, Any] = {"url": url, "path": path}
        for key, value in (("branch", branch), ("commit_id", commit_id), ("username", username),
                           ("password", password), ("depth", depth)):
            if value is not None:
                body[key] = value
        async with self._toolbox(sandbox_id, timeout=600) as toolbox:
            response = await toolbox.post("/git/clone", json=body)
        _check(response, "git_clone", sandbox_id)
        return f"cloned {url} into {path}" + (f" (branch {branch})" if branch else "")


def _execute_output(kept: shaping.HeadTail) -> tuple[int, str, str | None]:
    """(exit code, output, None) from `{"exitCode":N,"result":"..."}` read whole, or
    (exit code, start of the output, end of the output) from its head and tail."""
    if kept.whole:
        body = json.loads(bytes(kept.head + kept.tail))
        return int(body.get("exitCode", -1)), str(body.get("result", "")), None
    match = _EXECUTE_PREFIX.match(bytes(kept.head[:64]))
    if match is None:
        raise ToolFailure("execute_command got an answer it does not understand from the sandbox")
    tail = bytes(kept.tail).rstrip()
    tail = tail[:-2] if tail.endswith(b'"}') else tail
    return (int(match.group(1)), shaping.json_string_head(bytes(kept.head[match.end():])),
            shaping.json_string_tail(tail))


def _check_id(sandbox_id: str) -> None:
    _check_name(sandbox_id, "sandbox_id")


def _check_name(value: str, what: str) -> None:
    # Ids go into URL paths: refuse what would change the path instead of naming a resource.
    if not value or any(c in value for c in "/?#%\\") or value in (".", ".."):
        raise ToolFailure(f"{what} {value!r} is not a valid id")
