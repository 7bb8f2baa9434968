"""What the MCP tools do, without MCP: calls of the control plane and of a sandbox's
toolbox through `client.Client` (one API key, so one organization), results shaped for a
model.

Blocking (the shared client is sync): `mcpserver/server.py` runs each call in a worker
thread. Every failure is a `ToolFailure` whose message says what went wrong and what to
do next; the server turns it into an MCP tool error (`isError: true`). Nothing here
trusts a sandbox: file content and command output are only ever text handed back, cut to
size, with binary content refused, and no answer is read whole unless it is small.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import shlex
import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from typing import Any, cast

from client import ApiError, Client, Toolbox
from client.errors import UNREACHABLE
from client.streams import STDERR, STDOUT_MARK, Demux
from mcpserver import shaping
from mcpserver.started import StartedCommands

LANGUAGES = ("python", "typescript", "javascript")
LANGUAGE_LABEL = "code-toolbox-language"
MAX_LIST = 500
MAX_MATCHES = 200
MAX_DOWNLOAD = 100_000
MAX_UPLOAD = 10 * 1024 * 1024
# A search answer bigger than this is not read (a search of a huge tree).
MAX_SEARCH_ANSWER = 16 * 1024 * 1024
SESSION_PREFIX = "mcp-"
# Of /process/execute's JSON answer, at most this much is held, whatever the command printed.
EXECUTE_HEAD = 256 * 1024
EXECUTE_TAIL = 256 * 1024
_EXECUTE_PREFIX = re.compile(rb'^\{"exitCode":(-?\d+),"result":"')
# The toolbox URL of each API (its /config), found once per process.
TOOLBOX_URLS: dict[str, str] = {}
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ToolFailure(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _failure(exc: ApiError, action: str, sandbox_id: str | None = None) -> ToolFailure:
    if exc.status == UNREACHABLE:
        return ToolFailure(f"{action} failed: {exc.message}; is the main job running (./scripts/start) and "
                           "DAYTONA_API_URL right?")
    if exc.status == 401:
        return ToolFailure(f"{action} failed: the API key was refused ({exc.message}). Check DAYTONA_API_KEY (or "
                           "the Bearer key of the MCP endpoint); `python -m runtime api-key create` makes one.")
    if exc.status == 404 and sandbox_id is not None and (exc.path or "").startswith("/api/sandbox"):
        return ToolFailure(f"{action} failed: sandbox {sandbox_id} was not found. list_sandboxes shows yours.")
    return ToolFailure(f"{action} failed ({exc.status}): {exc.message}")


def _dump(value: Any) -> str:
    return json.dumps(value, indent=1, ensure_ascii=False)


def _summary(sandbox: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "name", "state", "cpu", "memory", "disk", "labels", "public", "autoStopInterval", "createdAt",
            "errorReason")
    return {k: sandbox[k] for k in keys if sandbox.get(k) not in (None, "", {})}


def _check_id(value: str, what: str = "sandbox_id") -> None:
    # Ids go into URL paths: refuse what would name another route instead of a resource.
    if not _ID.match(value or ""):
        raise ToolFailure(f"{what} {value!r} is not a valid id")


class SandboxTools:
    """The tool set over one `Client` (one API key, one organization)."""

    def __init__(self, client: Client, started: StartedCommands | None = None) -> None:
        self.client = client
        self.started = started

    @contextmanager
    def _calling(self, action: str, sandbox_id: str | None = None) -> Iterator[None]:
        try:
            yield
        except ApiError as exc:
            raise _failure(exc, action, sandbox_id) from None

    @contextmanager
    def _toolbox(self, sandbox_id: str, action: str, timeout: float | None = 60) -> Iterator[Toolbox]:
        """The sandbox's toolbox. Called straight (the proxy checks that the key may reach
        the sandbox); only when the proxy does not route it is the sandbox looked up, to
        say whether it is unknown or not started."""
        _check_id(sandbox_id)
        # Taken as started: the proxy is the judge, and its refusal is explained below.
        record = {"id": sandbox_id, "state": "started", "toolboxProxyUrl": self._toolbox_url()}
        with self._calling(action, sandbox_id):
            try:
                with self.client.toolbox(record, timeout=timeout) as toolbox:
                    yield toolbox
            except ApiError as exc:
                if exc.code not in ("sandbox-not-found", "sandbox-unreachable"):
                    raise
                record = self.client.get_sandbox(sandbox_id)  # a 404 when it is not this key's
                state, real_id = record.get("state"), record.get("id")
                if real_id != sandbox_id:
                    raise ToolFailure(f"{action} failed: {sandbox_id} is the name of sandbox {real_id}; pass its "
                                      "id as sandbox_id") from None
                if state == "started":  # the proxy learns a started sandbox within a moment
                    if exc.code == "sandbox-unreachable":
                        raise ToolFailure(f"{action} failed: sandbox {sandbox_id} is started but its daemon does "
                                          "not answer; try again, or stop and start it") from None
                    raise ToolFailure(f"{action} failed: sandbox {sandbox_id} has just started and is not "
                                      "reachable yet; try again in a second") from None
                raise ToolFailure(f"{action} failed: sandbox {sandbox_id} is {state}, not started; "
                                  "start_sandbox starts it") from None

    def _toolbox_url(self) -> str:
        url = TOOLBOX_URLS.get(self.client.config.api_url)
        if url is None:
            with self._calling("reading the server's configuration"):
                url = str(self.client.server_config()["proxyToolboxUrl"])
            TOOLBOX_URLS[self.client.config.api_url] = url
        return url

    # ---- sandboxes ---------------------------------------------------------------------

    def create_sandbox(self, name: str | None, language: str, env: dict[str, str] | None,
                       labels: dict[str, str] | None, cpu: int | None, memory: int | None,
                       auto_stop_minutes: int | None, public: bool) -> str:
        if language not in LANGUAGES:
            raise ToolFailure(f"language must be one of {', '.join(LANGUAGES)}, got {language!r}")
        body: dict[str, Any] = {"labels": {**(labels or {}), LANGUAGE_LABEL: language}, "public": public}
        for key, value in (("name", name), ("env", env), ("cpu", cpu), ("memory", memory),
                           ("autoStopInterval", auto_stop_minutes)):
            if value is not None:
                body[key] = value
        with self._calling("create_sandbox"):
            sandbox = self.client.create_sandbox(body)
        return _dump({**_summary(sandbox), "next": "pass this id as sandbox_id to the other tools; "
                                                   "destroy_sandbox when done"})

    def list_sandboxes(self) -> str:
        with self._calling("list_sandboxes"):
            items = self.client.list_sandboxes()
        text = _dump([_summary(s) for s in items[:MAX_LIST]])
        if len(items) > MAX_LIST:
            text += f"\n[the {MAX_LIST} newest of {len(items)} are shown]"
        return text

    def start_sandbox(self, sandbox_id: str) -> str:
        _check_id(sandbox_id)
        with self._calling("start_sandbox", sandbox_id):
            sandbox = self.client.start_sandbox(sandbox_id)
        return _dump(_summary(sandbox))

    def destroy_sandbox(self, sandbox_id: str) -> str:
        _check_id(sandbox_id)
        with self._calling("destroy_sandbox", sandbox_id):
            self.client.delete_sandbox(sandbox_id)
        return f"sandbox {sandbox_id} destroyed"

    def preview_link(self, sandbox_id: str, port: int, expires_in_seconds: int) -> str:
        _check_id(sandbox_id)
        if not 1 <= port <= 65535:
            raise ToolFailure(f"port must be from 1 to 65535, got {port}")
        with self._calling("preview_link", sandbox_id):
            plain = self.client.preview_url(sandbox_id, port)
            signed = self.client.signed_preview_url(sandbox_id, port, expires_in_seconds)
        link: dict[str, Any] = {
            "url": signed["url"],
            "expiresInSeconds": expires_in_seconds,
            "note": "open url as it is (its token is part of it). Or use plainUrl with the header "
                    "X-Daytona-Preview-Token: <token> (a public sandbox needs none).",
            "plainUrl": plain["url"],
            "token": plain["token"],
        }
        try:
            with self._toolbox(sandbox_id, "preview_link") as toolbox:
                listening = port in (toolbox.call("GET", "/port") or {}).get("ports", [])
        except ToolFailure:
            listening = False
        if not listening:  # the daemon's port list (IPv4 listeners) does not have it yet
            link["warning"] = (f"nothing listens on port {port} in the sandbox yet: start the server with "
                               "start_command (bound to 0.0.0.0 or 127.0.0.1), then open the url")
        return _dump(link)

    # ---- commands and code -------------------------------------------------------------

    def execute_command(self, sandbox_id: str, command: str, cwd: str | None, timeout: int) -> str:
        if not command.strip():
            raise ToolFailure("command is empty")
        body: dict[str, Any] = {"command": command, "timeout": timeout}
        if cwd:
            body["cwd"] = cwd
        # The output may be huge: only its head and tail are kept while it streams by.
        kept = shaping.HeadTail(EXECUTE_HEAD, EXECUTE_TAIL)
        with self._toolbox(sandbox_id, "execute_command", timeout=timeout + 10) as toolbox:
            try:
                with toolbox.stream("POST", "/process/execute", json=body) as response:
                    for chunk in response.iter_bytes():
                        kept.feed(chunk)
            except ApiError as exc:
                if exc.status == 408:
                    raise ToolFailure(f"the command ran longer than {timeout} s and was killed. For servers and "
                                      "long jobs use start_command and read_command_logs; or pass a larger "
                                      "timeout.") from None
                raise
        exit_code, output, tail = _execute_output(kept)
        note = "redirect the output to a file (cmd > /tmp/out.txt 2>&1) and page through it with read_file"
        if tail is None:
            return f"exit code: {exit_code}\n{shaping.cut(output, how_to_read_more=note)}"
        return f"exit code: {exit_code}\n{shaping.cut_huge(output, tail, kept.total, how_to_read_more=note)}"

    def run_code(self, sandbox_id: str, code: str, context_id: str | None, timeout: int) -> str:
        if not code.strip():
            raise ToolFailure("code is empty")
        stdout: list[str] = []
        stderr: list[str] = []
        error: dict[str, Any] | None = None
        with self._toolbox(sandbox_id, "run_code") as toolbox:
            try:
                for frame in toolbox.run_code(code, context_id, timeout):
                    kind = frame.get("type")
                    if kind == "stdout":
                        stdout.append(frame.get("text", ""))
                    elif kind == "stderr":
                        stderr.append(frame.get("text", ""))
                    elif kind == "error":
                        error = frame
            except ApiError as exc:
                if exc.status == 408:
                    raise ToolFailure(f"the code ran longer than {timeout} s and was interrupted (the context keeps "
                                      "its state unless it had to be killed); pass a larger timeout, or use "
                                      "start_command") from None
                raise
        parts = []
        if stdout:
            parts.append(shaping.cut("".join(stdout), how_to_read_more="print less, or write to a file and use "
                                                                       "read_file"))
        if stderr:
            parts.append("stderr:\n" + shaping.cut("".join(stderr), limit=shaping.MAX_TEXT // 2))
        if error is not None:
            parts.append(f"error: {error.get('name')}: {error.get('value')}\n"
                         + shaping.cut(error.get("traceback", ""), limit=shaping.MAX_TEXT // 2))
        return "\n".join(parts) if parts else "(no output)"

    def create_code_context(self, sandbox_id: str, cwd: str | None) -> str:
        with self._toolbox(sandbox_id, "create_code_context") as toolbox:
            context = toolbox.create_context(cwd)
        return _dump({"contextId": context["id"], "cwd": context.get("cwd"),
                      "note": "pass contextId to run_code; its variables persist between calls"})

    def start_command(self, sandbox_id: str, command: str, cwd: str | None) -> str:
        if not command.strip():
            raise ToolFailure("command is empty")
        # A session of its own: commands of one session run one after another.
        session_id = SESSION_PREFIX + secrets.token_hex(6)
        script = f"cd {shlex.quote(cwd)} && {command}" if cwd else command
        with self._toolbox(sandbox_id, "start_command") as toolbox:
            toolbox.create_session(session_id)
            try:
                started = toolbox.session_exec(session_id, script, run_async=True)
            except ApiError:
                toolbox.delete_session(session_id)
                raise
        if self.started is not None:
            self.started.add(sandbox_id, session_id)
        return _dump({"sessionId": session_id, "commandId": started["cmdId"],
                      "next": "read_command_logs with these ids (offset 0 first, then the nextOffset it returns); "
                              "stop_command stops it"})

    def read_command_logs(self, sandbox_id: str, session_id: str, command_id: str, offset: int,
                          wait_seconds: float, max_bytes: int) -> str:
        _check_id(session_id, "session_id")
        _check_id(command_id, "command_id")
        if offset < 0:
            raise ToolFailure("offset must be 0 or more (the nextOffset of the previous read)")
        max_bytes = max(1000, min(max_bytes, 100_000))
        raw = bytearray()
        start = [offset]
        with self._toolbox(sandbox_id, "read_command_logs") as toolbox:
            try:
                toolbox.get_command(session_id, command_id)
            except ApiError as exc:
                if exc.status == 404:
                    raise ToolFailure(f"no command {command_id} in session {session_id} of sandbox {sandbox_id} "
                                      "(start_command returns both ids)") from None
                raise
            follow = wait_seconds > 0
            chunks = cast(Generator[bytes, None, None], toolbox.follow_logs(
                session_id, command_id, offset, follow=follow,
                deadline=time.monotonic() + (wait_seconds if follow else 30),
                on_start=lambda at: start.__setitem__(0, at)))
            try:
                for chunk in chunks:
                    raw += chunk
                    if len(raw) > max_bytes:
                        break
            finally:
                chunks.close()  # hangs up the WebSocket once the page is full
            exit_code = toolbox.get_command(session_id, command_id).get("exitCode")
        end = shaping.page_end(bytes(raw), max_bytes)
        stdout, stderr = _demux(bytes(raw[:end]))
        next_offset = start[0] + end
        result: dict[str, Any] = {"running": exit_code is None, "exitCode": exit_code, "nextOffset": next_offset,
                                  "stdout": stdout}
        if stderr:
            result["stderr"] = stderr
        if start[0] > offset:
            result["skipped"] = f"bytes {offset}-{start[0]} are no longer kept"
        if end < len(raw):
            result["note"] = f"more output: call again with offset {next_offset}"
        elif exit_code is None:
            result["note"] = f"still running: call again with offset {next_offset} (wait_seconds waits for output)"
        return _dump(result)

    def list_commands(self, sandbox_id: str) -> str:
        with self._toolbox(sandbox_id, "list_commands") as toolbox:
            sessions = [s for s in toolbox.list_sessions() if str(s.get("sessionId", "")).startswith(SESSION_PREFIX)]
        commands = [{"sessionId": s["sessionId"], "commandId": c.get("id"), "command": c.get("command"),
                     "running": c.get("exitCode") is None, "exitCode": c.get("exitCode")}
                    for s in sessions for c in s.get("commands", [])]
        if not commands:
            return f"no commands started with start_command in sandbox {sandbox_id}"
        return _dump(commands[:MAX_LIST])

    def stop_command(self, sandbox_id: str, session_id: str, command_id: str, signal: str) -> str:
        _check_id(session_id, "session_id")
        _check_id(command_id, "command_id")
        with self._toolbox(sandbox_id, "stop_command") as toolbox:
            try:
                sent = toolbox.signal_command(session_id, command_id, signal)
            except ApiError as exc:
                if exc.status == 410:
                    return f"command {command_id} had already finished"
                raise
            deadline = time.monotonic() + 5
            exit_code = None
            while time.monotonic() < deadline:
                exit_code = toolbox.get_command(session_id, command_id).get("exitCode")
                if exit_code is not None:
                    break
                time.sleep(0.1)
        ended = (f"it exited with code {exit_code}" if exit_code is not None
                 else "it still runs after 5 s: stop_command again with signal KILL")
        return (f"sent {sent.get('signal', signal)} to {sent.get('processes', 0)} process(es); {ended}. "
                "Its logs stay readable with read_command_logs.")

    # ---- files -------------------------------------------------------------------------

    def list_files(self, sandbox_id: str, path: str, depth: int) -> str:
        if depth < 1:
            raise ToolFailure("depth must be 1 or more")
        with self._toolbox(sandbox_id, "list_files") as toolbox:
            entries = toolbox.list_files(path, depth)
        if not entries:
            return f"{path} is empty"
        lines = [f"{'d' if e.get('isDir') else '-'} {e.get('permissions', '')} {e.get('size', 0):>10} "
                 f"{e.get('modifiedAt') or ''} {e.get('path') or e.get('name')}{'/' if e.get('isDir') else ''}"
                 for e in entries[:MAX_LIST]]
        if len(entries) > MAX_LIST:
            lines.append(f"[{len(entries) - MAX_LIST} more entries not shown: list a subdirectory, or depth 1]")
        return "\n".join(lines)

    def get_file_info(self, sandbox_id: str, path: str) -> str:
        with self._toolbox(sandbox_id, "get_file_info") as toolbox:
            return _dump(toolbox.file_info(path))

    def create_folder(self, sandbox_id: str, path: str, mode: str) -> str:
        with self._toolbox(sandbox_id, "create_folder") as toolbox:
            toolbox.make_folder(path, mode)
        return f"folder {path} exists (mode {mode})"

    def delete_file(self, sandbox_id: str, path: str, recursive: bool) -> str:
        with self._toolbox(sandbox_id, "delete_file") as toolbox:
            toolbox.delete_file(path, recursive)
        return f"deleted {path}"

    def move_file(self, sandbox_id: str, source: str, destination: str) -> str:
        with self._toolbox(sandbox_id, "move_file") as toolbox:
            toolbox.move_file(source, destination)
        return f"moved {source} to {destination}"

    def upload_file(self, sandbox_id: str, path: str, content: str, encoding: str) -> str:
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
        with self._toolbox(sandbox_id, "upload_file") as toolbox:
            toolbox.upload(path, data)
        return f"wrote {len(data)} bytes to {path}"

    def download_file(self, sandbox_id: str, path: str) -> str:
        data = bytearray()
        with self._toolbox(sandbox_id, "download_file") as toolbox:
            with toolbox.stream("GET", "/files/download", params={"path": path}) as response:
                size = response.headers.get("content-length")
                for chunk in response.iter_bytes():
                    data += chunk
                    if len(data) > MAX_DOWNLOAD:
                        break
        total = int(size) if size and size.isdigit() else None
        if shaping.looks_binary(bytes(data)):
            raise ToolFailure(shaping.binary_refusal(path, total, bytes(data[:16])))
        if len(data) <= MAX_DOWNLOAD:
            return bytes(data).decode("utf-8", "replace")
        end = shaping.safe_utf8_end(bytes(data[:MAX_DOWNLOAD]))
        text = bytes(data[:end]).decode("utf-8", "replace")
        whole = f"{total} bytes" if total is not None else "longer"
        return text + (f"\n[file cut at {end} bytes of {whole}; read_file offset={text.count(chr(10)) + 1} "
                       "reads on from here]")

    def read_file(self, sandbox_id: str, path: str, offset: int, limit: int) -> str:
        if offset < 1:
            raise ToolFailure("offset is a line number and starts at 1")
        if limit < 1:
            raise ToolFailure("limit must be 1 or more")
        limit = min(limit, 2000)
        lines: list[str] = []
        number = 0
        budget = shaping.MAX_TEXT * 2
        more = False
        with self._toolbox(sandbox_id, "read_file") as toolbox:
            with toolbox.stream("GET", "/files/download", params={"path": path}) as response:
                size = response.headers.get("content-length")
                pending = b""
                first = True
                for chunk in response.iter_bytes():
                    if first:
                        first = False
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
                if not more and pending:  # a last line without a newline
                    number += 1
                    if number >= offset:
                        if len(lines) >= limit or budget <= 0:
                            more = True
                        else:
                            lines.append(f"{number:>6}\t{shaping.clip_line(pending.decode('utf-8', 'replace'))}")
        if not lines:
            return f"{path} is empty" if number == 0 else f"{path} has {number} lines; offset {offset} is past its end"
        last = offset + len(lines) - 1
        if more:
            return "\n".join(lines) + f"\n[lines {offset}-{last}; more follow: read_file offset={last + 1}]"
        return "\n".join(lines) + f"\n[lines {offset}-{last} of {number}; end of file]"

    def search_files(self, sandbox_id: str, pattern: str, path: str) -> str:
        if not pattern:
            raise ToolFailure("pattern is empty (it is literal text, not a regular expression)")
        body = bytearray()
        with self._toolbox(sandbox_id, "search_files", timeout=120) as toolbox:
            with toolbox.stream("GET", "/files/find", params={"path": path, "pattern": pattern}) as response:
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_SEARCH_ANSWER:
                        raise ToolFailure(f"the search of {path} for {pattern!r} found too much to return; search "
                                          "a smaller directory or a more specific pattern")
        matches = json.loads(body)
        if not matches:
            return f"no line under {path} contains {pattern!r}"
        text = "\n".join(f"{m['file']}:{m['line']}: {shaping.clip_line(m['content'].strip(), 300)}"
                         for m in matches[:MAX_MATCHES])
        if len(matches) > MAX_MATCHES:
            files = len({m["file"] for m in matches})
            text += (f"\n[{len(matches)} matches in {files} files, the first {MAX_MATCHES} shown: search a "
                     "subdirectory or a more specific pattern]")
        return shaping.cut(text, how_to_read_more="search a subdirectory or a more specific pattern")

    def git_clone(self, sandbox_id: str, url: str, path: str, branch: str | None, commit_id: str | None,
                  username: str | None, password: str | None) -> str:
        with self._toolbox(sandbox_id, "git_clone", timeout=600) as toolbox:
            toolbox.git_clone(url, path, branch=branch, commit_id=commit_id, username=username, password=password)
        return f"cloned {url} into {path}" + (f" (branch {branch})" if branch else "")


def _demux(raw: bytes) -> tuple[str, str]:
    """A page of a session log as (stdout, stderr). A page that starts mid-line (the last
    one was cut inside a huge line) has no marker first: its bytes count as stdout."""
    demux = Demux()
    out: list[bytes] = []
    err: list[bytes] = []
    for stream, piece in [*demux.feed(STDOUT_MARK + raw), *demux.flush()]:
        (err if stream == STDERR else out).append(piece)
    return b"".join(out).decode("utf-8", "replace"), b"".join(err).decode("utf-8", "replace")


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
