"""Sync httpx client of `/api` and of the toolbox through the proxy.

Why not the official `daytona` SDK: it is this project's test-only dependency (a large tree:
generated clients for three APIs, aiohttp, OpenTelemetry, ...), a CLI would pay its import
time on every call, and the CLI needs calls the SDK lacks (this project's `offset` on logs,
signals, the runtime's archive progress). httpx is already a dependency, and `websockets`
(through uvicorn[standard]) follows logs. Thread-safe: the MCP server can call it from
worker threads (`anyio.to_thread.run_sync`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any, Self
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from client.config import Config
from client.errors import ApiError

if TYPE_CHECKING:
    from websockets.sync.client import ClientConnection

USER_AGENT = "sandbox-toolbox-cli"
_RECV_SLICE = 0.25  # seconds
Json = Any


def _seg(value: str | int) -> str:
    """One path segment: an id or name typed by a user never reaches another route (`/`
    escaped; dots too, since httpx would fold a `..` segment into the path before it)."""
    return quote(str(value), safe="").replace(".", "%2E")


ENTRYPOINT, ENTRYPOINT_COMMAND = "entrypoint", "entrypoint_command"


def _logs_path(session_id: str, command_id: str) -> str:
    """The image entrypoint's log has a route of its own (toolbox-api.md §8.7)."""
    if session_id == ENTRYPOINT and command_id == ENTRYPOINT_COMMAND:
        return "/process/session/entrypoint/logs"
    return f"/process/session/{_seg(session_id)}/command/{_seg(command_id)}/logs"


class _Http:
    def __init__(self, base_url: str, api_key: str, timeout: float, transport: httpx.BaseTransport | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.http = httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(timeout, connect=10),
                                 transport=transport,
                                 headers={"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT,
                                          "X-Daytona-Source": USER_AGENT})

    def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiError.unreachable(f"{self.base_url}{path}", exc) from None
        if response.is_error:
            raise ApiError.from_response(response)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Json:
        response = self.send(method, path, **kwargs)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ApiError(response.status_code, f"{method} {path} answered something that is not JSON",
                           "BAD_RESPONSE", path) from None

    def close(self) -> None:
        self.http.close()


class _Closes:
    """Owns one connection pool: `close()` it, or use the object in a `with` block."""

    _http: _Http

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()


class Client(_Closes):
    """`/api`: sandboxes, volumes, snapshots, preview links; `toolbox(id)` for one sandbox's
    toolbox. Every method raises `ApiError`."""

    def __init__(self, config: Config, timeout: float = 120, transport: httpx.BaseTransport | None = None) -> None:
        self.config = config
        self._http = _Http(config.api_url, config.api_key, timeout, transport)
        self._transport = transport
        self._timeout = timeout

    def server_config(self) -> Json:
        """GET /config (no key needed): `proxyToolboxUrl`, `proxyTemplateUrl`, `defaultSnapshot`, ..."""
        return self._http.json("GET", "/config")

    # ---- sandboxes ----------------------------------------------------------------------

    def create_sandbox(self, body: dict[str, Any]) -> Json:
        """POST /sandbox with Daytona's CreateSandbox fields (`name`, `snapshot`, `env`,
        `labels`, `cpu`, `memory` GiB, `disk` GiB, `autoStopInterval`, `public`, ...)."""
        return self._http.json("POST", "/sandbox", json=body)

    def list_sandboxes(self, labels: dict[str, str] | None = None, states: Iterable[str] = ()) -> list[Json]:
        """Every sandbox of the key's organization, newest first (pages followed)."""
        items: list[Json] = []
        cursor: str | None = None
        while True:
            params: list[tuple[str, str]] = [("limit", "200")]
            if labels:
                params.append(("labels", json.dumps(labels)))
            params += [("states", state) for state in states]  # repeated, as the SDK sends a list
            if cursor:
                params.append(("cursor", cursor))
            page = self._http.json("GET", "/sandbox", params=params)
            if isinstance(page, list):  # a server without cursors answers one array
                return page
            items += page.get("items", [])
            cursor = page.get("nextCursor")
            if not cursor:
                return items

    def get_sandbox(self, id_or_name: str) -> Json:
        return self._http.json("GET", f"/sandbox/{_seg(id_or_name)}")

    def start_sandbox(self, id_or_name: str) -> Json:
        return self._http.json("POST", f"/sandbox/{_seg(id_or_name)}/start")

    def stop_sandbox(self, id_or_name: str, force: bool = False) -> Json:
        """The stopped Sandbox, or None for an ephemeral one (204: it is gone)."""
        params = {"force": "true"} if force else None
        return self._http.json("POST", f"/sandbox/{_seg(id_or_name)}/stop", params=params)

    def archive_sandbox(self, id_or_name: str) -> Json:
        return self._http.json("POST", f"/sandbox/{_seg(id_or_name)}/archive")

    def delete_sandbox(self, id_or_name: str) -> Json:
        return self._http.json("DELETE", f"/sandbox/{_seg(id_or_name)}")

    def set_labels(self, id_or_name: str, labels: dict[str, str]) -> Json:
        return self._http.json("PUT", f"/sandbox/{_seg(id_or_name)}/labels", json={"labels": labels})

    def preview_url(self, id_or_name: str, port: int) -> Json:
        """`{sandboxId, url, token}`: the URL of `port` and the token that opens it."""
        return self._http.json("GET", f"/sandbox/{_seg(id_or_name)}/ports/{_seg(port)}/preview-url")

    def signed_preview_url(self, id_or_name: str, port: int, expires_in: int | None = None) -> Json:
        params = {"expiresInSeconds": str(expires_in)} if expires_in is not None else None
        return self._http.json("GET", f"/sandbox/{_seg(id_or_name)}/ports/{_seg(port)}/signed-preview-url",
                               params=params)

    def wait_for_state(self, id_or_name: str, wanted: Iterable[str], timeout: float = 300,
                       on_poll: Callable[[Json], None] | None = None, interval: float = 0.25) -> Json:
        """Poll until the sandbox's state is one of `wanted`; `error`/`build_failed` or the
        deadline raise ApiError with the sandbox's reason."""
        targets = set(wanted)
        deadline = time.monotonic() + timeout
        while True:
            sandbox = self.get_sandbox(id_or_name)
            state = sandbox.get("state")
            if on_poll is not None:
                on_poll(sandbox)
            if state in targets:
                return sandbox
            if state in ("error", "build_failed"):
                reason = sandbox.get("errorReason") or "no reason given"
                raise ApiError(500, f"sandbox {sandbox.get('id')} is in state {state}: {reason}", "SANDBOX_ERROR")
            if time.monotonic() > deadline:
                raise ApiError(408, f"sandbox {sandbox.get('id')} is still {state} after {timeout:.0f} s",
                               "TIMEOUT")
            time.sleep(interval)

    # ---- volumes and snapshots -------------------------------------------------------------

    def create_volume(self, name: str) -> Json:
        return self._http.json("POST", "/volumes", json={"name": name})

    def list_volumes(self) -> list[Json]:
        return list(self._http.json("GET", "/volumes") or [])

    def get_volume(self, id_or_name: str) -> Json:
        """By id, else by name (Daytona's CLI takes either)."""
        try:
            return self._http.json("GET", f"/volumes/{_seg(id_or_name)}")
        except ApiError as exc:
            if exc.status != 404:
                raise
        return self._http.json("GET", f"/volumes/by-name/{_seg(id_or_name)}")

    def delete_volume(self, id_or_name: str) -> None:
        volume = self.get_volume(id_or_name)
        self._http.send("DELETE", f"/volumes/{_seg(volume['id'])}")

    def list_snapshots(self) -> list[Json]:
        items: list[Json] = []
        page = 1
        while True:
            answer = self._http.json("GET", "/snapshots", params={"page": str(page), "limit": "100"})
            items += answer.get("items", [])
            if page >= int(answer.get("totalPages") or 1):
                return items
            page += 1

    def get_snapshot(self, id_or_name: str) -> Json:
        return self._http.json("GET", f"/snapshots/{_seg(id_or_name)}")

    def delete_snapshot(self, id_or_name: str) -> None:
        self._http.send("DELETE", f"/snapshots/{_seg(id_or_name)}")

    # ---- toolbox -------------------------------------------------------------------------

    def toolbox(self, sandbox: str | dict[str, Any], timeout: float | None = None) -> Toolbox:
        """The toolbox of a sandbox (an id or name, looked up; or its Sandbox JSON), at
        `{toolboxProxyUrl}/{id}` as the SDKs reach it. Close it when done."""
        record = self.get_sandbox(sandbox) if isinstance(sandbox, str) else sandbox
        state = record.get("state")
        if state != "started":
            # The proxy routes started sandboxes only; its 404 would not say why.
            raise ApiError(409, f"sandbox {record.get('name') or record.get('id')} ({record.get('id')}) is {state}, "
                                "not started: start it first", "SANDBOX_NOT_STARTED", None)
        proxy = record.get("toolboxProxyUrl")
        if not proxy:
            proxy = self._http.json("GET", f"/sandbox/{_seg(record['id'])}/toolbox-proxy-url")["url"]
        return Toolbox(f"{proxy.rstrip('/')}/{_seg(record['id'])}", self.config.api_key,
                       self._timeout if timeout is None else timeout, self._transport)


class Toolbox(_Closes):
    """One sandbox's toolbox API (toolbox-api.md). Paths are the daemon's (`/files`, ...)."""

    def __init__(self, base_url: str, api_key: str, timeout: float = 120,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url
        self._http = _Http(base_url, api_key, timeout, transport)

    def call(self, method: str, path: str, **kwargs: Any) -> Json:
        """Any toolbox route, decoded JSON (None for an empty answer)."""
        return self._http.json(method, path, **kwargs)

    def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self._http.send(method, path, **kwargs)

    # process
    def execute(self, command: str, cwd: str | None = None, env: dict[str, str] | None = None,
                timeout: int | None = None) -> Json:
        """`{exitCode, result}` once the command has ended (output buffered by the daemon)."""
        body: dict[str, Any] = {"command": command}
        if cwd:
            body["cwd"] = cwd
        if env:
            body["envs"] = env
        if timeout:
            body["timeout"] = timeout
        read = None if not timeout else timeout + 10
        return self._http.json("POST", "/process/execute", json=body, timeout=httpx.Timeout(read, connect=10))

    def code_run(self, code: str, language: str | None = None, timeout: int | None = None) -> Json:
        body: dict[str, Any] = {"code": code}
        if language:
            body["language"] = language
        if timeout:
            body["timeout"] = timeout
        return self._http.json("POST", "/process/code-run", json=body,
                               timeout=httpx.Timeout(None if not timeout else timeout + 10, connect=10))

    def create_session(self, session_id: str) -> None:
        self._http.send("POST", "/process/session", json={"sessionId": session_id})

    def delete_session(self, session_id: str) -> None:
        self._http.send("DELETE", f"/process/session/{_seg(session_id)}")

    def get_session(self, session_id: str) -> Json:
        return self._http.json("GET", f"/process/session/{_seg(session_id)}")

    def list_sessions(self) -> list[Json]:
        return list(self._http.json("GET", "/process/session") or [])

    def session_exec(self, session_id: str, command: str, run_async: bool = True) -> Json:
        """`{cmdId, ...}`; with `run_async` it answers at once (202) and the command runs on."""
        return self._http.json("POST", f"/process/session/{_seg(session_id)}/exec",
                               json={"command": command, "runAsync": run_async},
                               timeout=httpx.Timeout(None if not run_async else 60, connect=10))

    def get_command(self, session_id: str, command_id: str) -> Json:
        """`{id, command, exitCode?}`: `exitCode` appears once the command has ended."""
        return self._http.json("GET", f"/process/session/{_seg(session_id)}/command/{_seg(command_id)}")

    def signal_command(self, session_id: str, command_id: str, signal: str = "TERM") -> Json:
        return self._http.json("POST", f"/process/session/{_seg(session_id)}/command/{_seg(command_id)}/signal",
                               params={"signal": signal})

    def command_logs(self, session_id: str, command_id: str, offset: int = 0) -> tuple[Json, int]:
        """(`{output, stdout, stderr}` from byte `offset` of the raw log, the offset reached):
        read more later from that offset."""
        response = self._http.send("GET", _logs_path(session_id, command_id),
                                   params={"offset": str(offset)} if offset else None)
        reached = response.headers.get("x-output-offset")
        return response.json(), int(reached) if reached and reached.isdigit() else offset

    def follow_logs(self, session_id: str, command_id: str, offset: int = 0, follow: bool = True,
                    open_timeout: float = 30, *, deadline: float | None = None,
                    on_start: Callable[[int], None] | None = None) -> Iterator[bytes]:
        """The raw log (with stream markers, `client.streams.Demux` splits them) as it is
        written, over the toolbox's WebSocket; ends when the command has ended (`follow`)
        or at the current end. Each chunk is yielded as it arrives, nothing is buffered.
        `deadline` (time.monotonic()) ends it early; `on_start` gets the offset the stream
        really starts at (the log keeps a bounded tail, so an old offset moves up)."""
        from websockets.exceptions import ConnectionClosed

        path = _logs_path(session_id, command_id)
        query = f"follow={'true' if follow else 'false'}" + (f"&offset={offset}" if offset else "")
        with self._websocket(path, query, open_timeout) as socket:
            if on_start is not None:
                started = socket.response.headers.get("x-output-offset") if socket.response else None
                on_start(int(started) if started and started.isdigit() else offset)
            try:
                while True:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return
                    try:
                        # In slices: on the main thread (`logs --follow`), a SIGINT another
                        # thread took is only acted on when this returns (cli/execute.py).
                        message = socket.recv(timeout=_RECV_SLICE if remaining is None
                                              else min(remaining, _RECV_SLICE))
                    except TimeoutError:
                        continue  # the deadline above decides; recv keeps what it had
                    yield message if isinstance(message, bytes) else message.encode()
            except ConnectionClosed:
                pass
            code = socket.close_code
            if code not in (1000, 1005):  # 1005: closed without a status, as the SDK accepts
                raise ApiError(502, f"log stream closed: {socket.close_reason or 'unexpectedly'} "
                                    f"(close code {code})", "STREAM_CLOSED", path)

    @contextmanager
    def _websocket(self, path: str, query: str, open_timeout: float) -> Iterator[ClientConnection]:
        """A WebSocket to a toolbox route with the key, closed on leaving; a refused upgrade
        raises ApiError with the daemon's or the proxy's own error."""
        from websockets.exceptions import InvalidStatus, WebSocketException
        from websockets.sync.client import connect

        parts = urlsplit(f"{self.base_url}{path}")
        url = urlunsplit(("wss" if parts.scheme == "https" else "ws", parts.netloc, parts.path, query, ""))
        try:
            socket = connect(url, additional_headers={"Authorization": f"Bearer {self._http.api_key}",
                                                      "User-Agent": USER_AGENT},
                             open_timeout=open_timeout, max_size=None, user_agent_header=None)
        except InvalidStatus as exc:
            raise _denial(bytes(exc.response.body or b""), exc.response.status_code, path) from None
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise ApiError.unreachable(url, exc) from None
        with socket:
            yield socket

    @contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """Any toolbox route with its answer unread (`iter_bytes()` it): for answers too big
        to hold, such as a huge command output. Errors raise ApiError before it yields."""
        request = self._http.http.build_request(method, path, **kwargs)
        try:
            response = self._http.http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise ApiError.unreachable(f"{self.base_url}{path}", exc) from None
        try:
            if response.is_error:
                raise ApiError.from_response(response, response.read())
            yield response
        finally:
            response.close()

    # interpreter
    def create_context(self, cwd: str | None = None) -> Json:
        """`{id, cwd, createdAt, active, language}`: a Python worker of its own for `run_code`."""
        return self._http.json("POST", "/process/interpreter/context", json={"cwd": cwd} if cwd else {})

    def run_code(self, code: str, context_id: str | None = None, timeout: int | None = None,
                 open_timeout: float = 30) -> Iterator[Json]:
        """Run code in a stateful interpreter context (`default` when none), over the
        toolbox's WebSocket: yields its frames `{type: stdout|stderr|error|control, text,
        name, value, traceback}` as they come. A timeout is ApiError 408; any other abnormal
        close ApiError 502 with the daemon's reason."""
        from websockets.exceptions import ConnectionClosed

        request: dict[str, Any] = {"code": code}
        if context_id:
            request["contextId"] = context_id
        if timeout is not None:
            request["timeout"] = timeout
        path = "/process/interpreter/execute"
        with self._websocket(path, "", open_timeout) as socket:
            socket.send(json.dumps(request))
            try:
                for message in socket:
                    yield json.loads(message)
            except ConnectionClosed:
                pass
            closed, reason = socket.close_code, socket.close_reason
            if closed == 4008:
                raise ApiError(408, f"the code ran longer than {timeout} s and was interrupted",
                               "PROCESS_EXECUTION_TIMEOUT", path)
            if closed not in (1000, 1005):
                raise ApiError(502, f"the interpreter closed the connection: {reason or 'unexpectedly'} "
                                    f"(close code {closed})", "STREAM_CLOSED", path)

    # files
    def list_files(self, path: str = ".", depth: int | None = None) -> list[Json]:
        params = {"path": path, **({"depth": str(depth)} if depth else {})}
        return list(self._http.json("GET", "/files", params=params) or [])

    def file_info(self, path: str) -> Json:
        return self._http.json("GET", "/files/info", params={"path": path})

    def make_folder(self, path: str, mode: str = "0755") -> None:
        self._http.send("POST", "/files/folder", params={"path": path, "mode": mode})

    def delete_file(self, path: str, recursive: bool = False) -> None:
        self._http.send("DELETE", "/files", params={"path": path, "recursive": "true" if recursive else "false"})

    def move_file(self, source: str, destination: str) -> None:
        self._http.send("POST", "/files/move", params={"source": source, "destination": destination})

    def find_in_files(self, path: str, pattern: str) -> list[Json]:
        return list(self._http.json("GET", "/files/find", params={"path": path, "pattern": pattern}) or [])

    def search_files(self, path: str, pattern: str) -> list[str]:
        return list((self._http.json("GET", "/files/search", params={"path": path, "pattern": pattern}) or {})
                    .get("files", []))

    def download(self, path: str, chunk_size: int = 1 << 16) -> Iterator[bytes]:
        """The file's bytes as they arrive (GET /files/download), never whole in memory."""
        request = self._http.http.build_request("GET", "/files/download", params={"path": path})
        try:
            response = self._http.http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise ApiError.unreachable(f"{self.base_url}/files/download", exc) from None
        try:
            if response.is_error:
                raise ApiError.from_response(response, response.read())
            yield from response.iter_bytes(chunk_size)
        finally:
            response.close()

    def upload(self, path: str, content: bytes | Iterable[bytes] | IO[bytes], chunk_size: int = 1 << 16) -> None:
        """Write `content` (bytes, chunks, or a binary file object read in chunks) to `path`
        in the sandbox: POST /files/upload with the raw body, streamed."""
        if hasattr(content, "read"):
            reader: IO[bytes] = content  # type: ignore[assignment]
            body: bytes | Iterable[bytes] = iter(lambda: reader.read(chunk_size), b"")
        else:
            body = content
        self._http.send("POST", "/files/upload", params={"path": path}, content=body,
                        headers={"Content-Type": "application/octet-stream"},
                        timeout=httpx.Timeout(None, connect=10))

    # git
    def git_clone(self, url: str, path: str, branch: str | None = None, commit_id: str | None = None,
                  username: str | None = None, password: str | None = None) -> None:
        body: dict[str, Any] = {"url": url, "path": path}
        for key, value in (("branch", branch), ("commit_id", commit_id), ("username", username),
                           ("password", password)):
            if value:
                body[key] = value
        self._http.send("POST", "/git/clone", json=body, timeout=httpx.Timeout(600, connect=10))


def _denial(body: bytes, status: int, path: str) -> ApiError:
    """The ApiError of a refused WebSocket upgrade, with the code of its JSON body (the
    proxy's `sandbox-not-found`, the daemon's `NOT_FOUND`, ...)."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    code = data.get("code") if isinstance(data, dict) and isinstance(data.get("code"), str) else None
    if isinstance(data, dict) and data.get("message"):
        return ApiError(status, str(data["message"]), code, path)
    return ApiError(status, body.decode("utf-8", "replace").strip()[:500] or f"HTTP {status}", code, path)
