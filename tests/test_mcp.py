"""The MCP server for coding agents, driven with the official `mcp` client library against
the real main job: over stdio (the server spawned as `python -m mcpserver start`, as an
agent app runs it) and over streamable HTTP (the main job's `/api/mcp`, through its proxy).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import httpx2
import jsonschema  # type: ignore[import-untyped]  # no stubs (as in test_images.py)
import pytest
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from tests.controlplane_helpers import api_url, extra_key
from tests.helpers import REPO_ROOT, free_port
from tests.runtime_helpers import Stack, needs_bwrap, start_stack

pytestmark = [needs_bwrap, pytest.mark.timeout(300)]

TRANSPORTS = ["stdio", "http"]
DAYTONA_TOOLS = {"create_sandbox", "destroy_sandbox", "execute_command", "upload_file", "download_file",
                 "list_files", "move_file", "delete_file", "create_folder", "get_file_info", "git_clone",
                 "preview_link"}
BEYOND = {"run_code", "search_files", "read_file", "start_command", "read_command_logs", "stop_command"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("mcp"), "--no-sandbox")
    yield running
    running.stop()


@asynccontextmanager
async def session(stack: Stack, transport: str, key: str | None = None) -> AsyncIterator[ClientSession]:
    key = key or stack.api_key
    if transport == "stdio":
        params = StdioServerParameters(command=sys.executable, args=["-m", "mcpserver", "start"], cwd=REPO_ROOT,
                                       env={"DAYTONA_API_URL": api_url(stack), "DAYTONA_API_KEY": key})
        async with stdio_client(params) as (read, write), ClientSession(read, write) as client:
            await client.initialize()
            yield client
    else:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=httpx2.Timeout(300))
        async with http, streamable_http_client(f"{api_url(stack)}/mcp", http_client=http) as (read, write), \
                ClientSession(read, write) as client:
            await client.initialize()
            yield client


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    anyio.run(scenario)


def text(result: Any) -> str:
    return "\n".join(part.text for part in result.content if getattr(part, "type", "") == "text")


async def call(client: ClientSession, name: str, **arguments: Any) -> str:
    result = await client.call_tool(name, arguments)
    assert not result.is_error, f"{name} failed: {text(result)}"
    return text(result)


async def call_json(client: ClientSession, name: str, **arguments: Any) -> Any:
    return json.loads(await call(client, name, **arguments))


async def failure(client: ClientSession, name: str, **arguments: Any) -> str:
    result = await client.call_tool(name, arguments)
    assert result.is_error, f"{name} should have failed: {text(result)}"
    return text(result)


def fetch_preview(stack: Stack, url: str, **kwargs: Any) -> httpx.Response:
    """GET a preview URL at the stack's proxy (the URL's host names the sandbox and port;
    `*.localhost` need not resolve here, so the host goes in the Host header)."""
    parts = urlsplit(url)
    target = f"{stack.url}{parts.path or '/'}" + (f"?{parts.query}" if parts.query else "")
    return httpx.get(target, headers={"Host": parts.netloc, **kwargs.pop("headers", {})}, timeout=30, **kwargs)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_tools_have_schemas_that_validate(stack: Stack, transport: str) -> None:
    async def scenario() -> None:
        async with session(stack, transport) as client:
            tools = (await client.list_tools()).tools
        names = {tool.name for tool in tools}
        assert DAYTONA_TOOLS | BEYOND <= names, sorted(DAYTONA_TOOLS | BEYOND - names)
        for tool in tools:
            schema = tool.input_schema
            jsonschema.Draft202012Validator.check_schema(schema)
            assert schema["type"] == "object" and tool.description, tool.name
            validator = jsonschema.Draft202012Validator(schema)
            # A call with only the required arguments (strings where strings go) fits the schema...
            example = {name: _example(schema["properties"][name]) for name in schema.get("required", [])}
            assert not list(validator.iter_errors(example)), (tool.name, example)
            # ...and one without them does not.
            if schema.get("required"):
                assert list(validator.iter_errors({})), tool.name
        by_name = {tool.name: tool for tool in tools}
        destroy, read = by_name["destroy_sandbox"].annotations, by_name["read_file"].annotations
        assert destroy is not None and destroy.destructive_hint is True
        assert read is not None and read.read_only_hint is True
        port = by_name["preview_link"].input_schema["properties"]["port"]
        assert list(jsonschema.Draft202012Validator(port).iter_errors(70000))

    run(scenario)


def _example(prop: dict[str, Any]) -> Any:
    kinds = [prop.get("type")] + [alt.get("type") for alt in prop.get("anyOf", [])]
    if "integer" in kinds:
        return max(1, prop.get("minimum", 1))
    if "object" in kinds:
        return {}
    return "x"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_sandbox_code_server_preview_and_destroy(stack: Stack, transport: str) -> None:
    """What an agent does: create a sandbox, run code (state kept between calls), start a
    web server in it, get its preview link, fetch the preview, stop the server, destroy."""
    port = 8000 + free_port() % 1000

    async def scenario() -> None:
        async with session(stack, transport) as client:
            created = await call_json(client, "create_sandbox", labels={"test": "mcp"})
            sandbox_id = created["id"]
            assert created["state"] == "started"
            try:
                await call(client, "run_code", sandbox_id=sandbox_id, code="answer = 41")
                out = await call(client, "run_code", sandbox_id=sandbox_id, code="print(answer + 1)")
                assert out.strip() == "42"
                error = await call(client, "run_code", sandbox_id=sandbox_id, code="1 / 0")
                assert "ZeroDivisionError" in error

                await call(client, "upload_file", sandbox_id=sandbox_id, path="site/index.html",
                           content=f"<h1>hello from {transport}</h1>\n")
                started = await call_json(client, "start_command", sandbox_id=sandbox_id, cwd="site",
                                          command=f"python3 -u -m http.server {port} --bind 127.0.0.1")
                ids = {"sandbox_id": sandbox_id, "session_id": started["sessionId"],
                       "command_id": started["commandId"]}
                early = await call_json(client, "preview_link", sandbox_id=sandbox_id, port=port + 1)
                assert "nothing listens" in early["warning"]
                deadline = time.monotonic() + 30
                while "warning" in (link := await call_json(client, "preview_link", sandbox_id=sandbox_id,
                                                            port=port)) and time.monotonic() < deadline:
                    await anyio.sleep(0.2)
                assert "warning" not in link, link
                while True:
                    response = await anyio.to_thread.run_sync(fetch_preview, stack, link["url"])
                    if response.status_code == 200 or time.monotonic() > deadline:
                        break
                    await anyio.sleep(0.2)
                assert response.status_code == 200, response.text
                assert f"hello from {transport}" in response.text
                # The plain URL needs the token in a header; without it the proxy refuses.
                plain = await anyio.to_thread.run_sync(fetch_preview, stack, link["plainUrl"])
                assert plain.status_code in (401, 403), plain.status_code
                with_token = await anyio.to_thread.run_sync(
                    lambda: fetch_preview(stack, link["plainUrl"], headers={"X-Daytona-Preview-Token": link["token"]}))
                assert with_token.status_code == 200

                listed = await call_json(client, "list_commands", sandbox_id=sandbox_id)
                assert [(c["sessionId"], c["commandId"], c["running"]) for c in listed] == \
                    [(ids["session_id"], ids["command_id"], True)]
                logs = await call_json(client, "read_command_logs", **ids, wait_seconds=2)
                assert logs["running"] is True and "GET / " in logs["stderr"], logs
                stopped = await call(client, "stop_command", **ids)
                assert "exited with code" in stopped, stopped
                after = await call_json(client, "read_command_logs", **ids, offset=logs["nextOffset"])
                assert after["running"] is False and after["exitCode"] is not None
            finally:
                destroyed = await call(client, "destroy_sandbox", sandbox_id=sandbox_id)
            assert "destroyed" in destroyed
            listed = await call_json(client, "list_sandboxes")
            assert sandbox_id not in {s["id"] for s in listed}
            gone = await failure(client, "execute_command", sandbox_id=sandbox_id, command="true")
            assert "not found" in gone

    run(scenario)


@pytest.fixture(scope="module")
def sandbox_id(stack: Stack) -> Iterator[str]:
    response = stack.api("POST", "/sandbox", json={"labels": {"test": "mcp-files"}})
    assert response.status_code == 200, response.text
    yield response.json()["id"]
    stack.api("DELETE", f"/sandbox/{response.json()['id']}")


def test_files_search_and_ranges(stack: Stack, sandbox_id: str) -> None:
    async def scenario() -> None:
        async with session(stack, "http") as client:
            sid = {"sandbox_id": sandbox_id}
            await call(client, "create_folder", **sid, path="work/src")
            body = "".join(f"line {n}\n" for n in range(1, 1001)) + "needle here\n"
            await call(client, "upload_file", **sid, path="work/src/big.txt", content=body)
            await call(client, "upload_file", **sid, path="work/src/app.py", content="def main():\n    return 1\n")

            first = await call(client, "read_file", **sid, path="work/src/big.txt", offset=1, limit=3)
            assert first.splitlines()[:3] == ["     1\tline 1", "     2\tline 2", "     3\tline 3"]
            assert "read_file offset=4" in first
            tail = await call(client, "read_file", **sid, path="work/src/big.txt", offset=1000, limit=50)
            assert "line 1000" in tail and "needle here" in tail and "of 1001; end of file" in tail
            past = await call(client, "read_file", **sid, path="work/src/big.txt", offset=5000)
            assert "past its end" in past

            found = await call(client, "search_files", **sid, pattern="needle", path="work")
            assert found.strip() == "work/src/big.txt:1001: needle here"
            assert "no line" in await call(client, "search_files", **sid, pattern="absent-xyz", path="work")

            listing = await call(client, "list_files", **sid, path="work/src")
            assert "app.py" in listing and "big.txt" in listing
            info = json.loads(await call(client, "get_file_info", **sid, path="work/src/app.py"))
            assert info["size"] == len("def main():\n    return 1\n") and info["isDir"] is False

            await call(client, "move_file", **sid, source="work/src/app.py", destination="work/app.py")
            assert "def main" in await call(client, "download_file", **sid, path="work/app.py")
            await call(client, "delete_file", **sid, path="work/app.py")
            missing = await failure(client, "download_file", **sid, path="work/app.py")
            assert "work/app.py" in missing and ("not found" in missing.lower() or "no such" in missing.lower())
            refused = await failure(client, "delete_file", **sid, path="work")
            assert "recursive" in refused

            # Binary content is refused with the reason, not returned as mojibake.
            png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
            await call(client, "upload_file", **sid, path="work/dot.png", content=png, encoding="base64")
            for tool in ("download_file", "read_file"):
                refusal = await failure(client, tool, **sid, path="work/dot.png")
                assert "binary" in refusal and "PNG image" in refusal, refusal

            # git clone (of a repository made in the sandbox: test sandboxes have no egress).
            made = await call(client, "execute_command", **sid, command=(
                "git init -q /tmp/origin && cd /tmp/origin && echo hi > README && git add README && "
                "git -c user.email=t@example.com -c user.name=t commit -q -m first && echo made"))
            assert made.strip().endswith("made"), made
            await call(client, "git_clone", **sid, url="file:///tmp/origin", path="work/clone")
            assert "hi" in await call(client, "read_file", **sid, path="work/clone/README")
            bad_clone = await failure(client, "git_clone", **sid, url="file:///tmp/no-such-repo", path="work/c2")
            assert "git_clone failed" in bad_clone

            # Long output is cut with a note saying how to get all of it.
            long = await call(client, "execute_command", **sid, command="seq 1 20000")
            assert long.startswith("exit code: 0\n1\n2\n") and long.rstrip().endswith("read_file]")
            assert "\n20000\n" in long and len(long) < 21_000 and "characters omitted" in long
            # A huge one (20 MB) is never held whole: its start and end still arrive.
            huge = await call(client, "execute_command", **sid, command="seq 1 3000000; echo done >&2; exit 4")
            assert huge.startswith("exit code: 4\n1\n2\n") and "\n2999999\n3000000\ndone\n" in huge, huge[-300:]
            assert "bytes omitted" in huge and len(huge) < 21_000
            failed = await call(client, "execute_command", **sid, command="echo oops >&2; exit 3")
            assert failed == "exit code: 3\noops\n" or failed.startswith("exit code: 3\noops")

    run(scenario)


def test_command_logs_page_by_offset(stack: Stack, sandbox_id: str) -> None:
    async def scenario() -> None:
        async with session(stack, "http") as client:
            started = await call_json(client, "start_command", sandbox_id=sandbox_id,
                                      command="for i in $(seq 1 3000); do echo out-$i; done; echo err-1 >&2")
            ids = {"sandbox_id": sandbox_id, "session_id": started["sessionId"], "command_id": started["commandId"]}
            offset, pages, stdout, stderr = 0, 0, "", ""
            while True:
                page = await call_json(client, "read_command_logs", **ids, offset=offset, max_bytes=5000,
                                       wait_seconds=1)
                assert page["nextOffset"] >= offset
                stdout += page["stdout"]
                stderr += page.get("stderr", "")
                offset = page["nextOffset"]
                pages += 1
                if not page["running"] and "note" not in page:
                    break
                assert pages < 100
            assert pages >= 5  # 3000 lines of ~11 bytes (with markers) in pages of 5000 bytes
            assert stdout.splitlines() == [f"out-{i}" for i in range(1, 3001)]
            assert stderr == "err-1\n" and page["exitCode"] == 0

    run(scenario)


def test_stdio_sessions_commands_go_with_it_http_ones_stay(stack: Stack, sandbox_id: str) -> None:
    def sessions() -> set[str]:
        with stack.toolbox(sandbox_id) as toolbox:
            return {s["sessionId"] for s in toolbox.get("/process/session").json()}

    async def scenario() -> tuple[str, str]:
        async with session(stack, "stdio") as client:
            over_stdio = await call_json(client, "start_command", sandbox_id=sandbox_id, command="sleep 300")
            assert over_stdio["sessionId"] in sessions()
        async with session(stack, "http") as client:
            over_http = await call_json(client, "start_command", sandbox_id=sandbox_id, command="sleep 301")
        return over_stdio["sessionId"], over_http["sessionId"]

    stdio_session, http_session = anyio.run(scenario)
    # The stdio server has exited (the client waits for that): its session went before it did.
    left = sessions()
    assert stdio_session not in left
    assert http_session in left  # stateless HTTP: no session end to go with
    with stack.toolbox(sandbox_id) as toolbox:
        assert toolbox.delete(f"/process/session/{http_session}").status_code == 204


def test_a_sigterm_ends_the_stdio_server_at_once_and_its_commands_with_it(stack: Stack, sandbox_id: str) -> None:
    """An agent app that sends SIGTERM with stdin still open: the server leaves at once
    (it used to wait for stdin's EOF), deleting what start_command started."""
    import os
    import signal
    import subprocess

    from mcp.types import LATEST_PROTOCOL_VERSION

    env = {"PATH": os.environ["PATH"], "DAYTONA_API_URL": api_url(stack), "DAYTONA_API_KEY": stack.api_key}
    server = subprocess.Popen([sys.executable, "-m", "mcpserver", "start"], cwd=REPO_ROOT, env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    stdin, stdout = server.stdin, server.stdout
    assert stdin is not None and stdout is not None
    try:
        def send(message: dict[str, Any]) -> None:
            stdin.write(json.dumps({"jsonrpc": "2.0", **message}) + "\n")
            stdin.flush()

        def answer(request_id: int) -> Any:
            while True:
                message = json.loads(stdout.readline())
                if message.get("id") == request_id:
                    return message["result"]

        send({"id": 1, "method": "initialize", "params": {"protocolVersion": LATEST_PROTOCOL_VERSION,
                                                          "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
        answer(1)
        send({"method": "notifications/initialized"})
        send({"id": 2, "method": "tools/call", "params": {"name": "start_command", "arguments": {
            "sandbox_id": sandbox_id, "command": "sleep 302"}}})
        started = json.loads(answer(2)["content"][0]["text"])
        server.send_signal(signal.SIGTERM)
        assert server.wait(10) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    with stack.toolbox(sandbox_id) as toolbox:
        assert started["sessionId"] not in {s["sessionId"] for s in toolbox.get("/process/session").json()}


def test_tool_errors_are_results_not_crashes(stack: Stack, sandbox_id: str) -> None:
    async def scenario() -> None:
        async with session(stack, "stdio") as client:
            unknown = await failure(client, "execute_command", sandbox_id="0123456789ab", command="true")
            assert "0123456789ab" in unknown and "not found" in unknown and "list_sandboxes" in unknown
            bad = await failure(client, "preview_link", sandbox_id=sandbox_id, port=0)
            assert "port" in bad
            wrong = await failure(client, "read_file", sandbox_id=sandbox_id, path="/etc/hostname", offset="a")
            assert "offset" in wrong
            # Ids never change which route is called: a path in one is refused before any request.
            escape = await failure(client, "read_command_logs", sandbox_id=sandbox_id, session_id="../x",
                                   command_id="y")
            assert "not a valid id" in escape
            for sneaky in (f"{sandbox_id}/../{sandbox_id}", "..", f"{sandbox_id}?x=1", f"{sandbox_id}%2Fx"):
                refused = await failure(client, "execute_command", sandbox_id=sneaky, command="true")
                assert "not a valid id" in refused, refused
            timeout = await failure(client, "execute_command", sandbox_id=sandbox_id, command="sleep 5", timeout=1)
            assert "start_command" in timeout
            nothing = await failure(client, "no_such_tool")
            assert "no_such_tool" in nothing
            # The session is intact after all that.
            assert "exit code: 0" in await call(client, "execute_command", sandbox_id=sandbox_id, command="true")

    run(scenario)


def test_http_endpoint_needs_a_known_key(stack: Stack) -> None:
    assert stack.banner["MCP"] == f"{api_url(stack)}/mcp"  # the main job says where it is
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    for headers in ({}, {"Authorization": "Bearer dtn_" + "0" * 64}, {"Authorization": "Basic eDp5"}):
        response = httpx.post(f"{api_url(stack)}/mcp", json=body, headers=headers, timeout=30)
        assert response.status_code == 401, response.text
        assert response.json()["source"] == "DAYTONA_API" and "key" in response.json()["message"]
    accept = {"Authorization": f"Bearer {stack.api_key}", "Accept": "application/json, text/event-stream"}
    # Stateless: one POST is a whole exchange, even a tool call with no initialize before it...
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "list_sandboxes", "arguments": {}}}
    answer = httpx.post(f"{api_url(stack)}/mcp", json=call, headers=accept, timeout=60)
    assert answer.status_code == 200 and answer.json()["result"]["isError"] is False, answer.text
    # ...and a GET (a server-to-client stream) is refused at once instead of held open.
    refused = httpx.get(f"{api_url(stack)}/mcp", headers=accept, timeout=10)
    assert refused.status_code == 405 and refused.headers["allow"] == "POST"


def test_stdio_without_a_key_says_what_to_set(stack: Stack) -> None:
    import subprocess

    env = {"PATH": "/usr/bin:/bin", "DAYTONA_API_URL": api_url(stack)}
    result = subprocess.run([sys.executable, "-m", "mcpserver", "start"], env=env, cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2 and "DAYTONA_API_KEY" in result.stderr and result.stdout == ""


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_another_organization_cannot_see_the_sandbox(stack: Stack, sandbox_id: str, transport: str) -> None:
    other = extra_key(stack, f"mcp-other-{transport}")  # the proxy takes it before this returns

    async def scenario() -> None:
        async with session(stack, transport, key=other) as client:
            assert sandbox_id not in {s["id"] for s in await call_json(client, "list_sandboxes")}
            for tool, arguments in (("execute_command", {"command": "id"}), ("read_file", {"path": "/etc/hostname"}),
                                    ("run_code", {"code": "print(1)"}), ("preview_link", {"port": 3000}),
                                    ("destroy_sandbox", {})):
                message = await failure(client, tool, sandbox_id=sandbox_id, **arguments)
                assert "not found" in message, (tool, message)
        # ... and it is still there for its own organization.
        async with session(stack, transport) as client:
            assert sandbox_id in {s["id"] for s in await call_json(client, "list_sandboxes")}

    run(scenario)


def test_config_prints_what_agent_apps_take(stack: Stack, tmp_path: Path) -> None:
    import subprocess

    env = {"PATH": "/usr/bin:/bin", "DAYTONA_API_URL": api_url(stack), "DAYTONA_API_KEY": stack.api_key}
    command = Path(sys.executable).parent / "sandbox-toolbox"
    assert command.exists(), "the package's sandbox-toolbox command is installed in the venv"
    result = subprocess.run([str(command), "mcp", "config"], env=env, cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    same = subprocess.run([sys.executable, "-m", "mcpserver", "config"], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert same.stdout == result.stdout
    servers = json.loads(result.stdout)["mcpServers"]
    stdio, http = servers["sandbox-toolbox"], servers["sandbox-toolbox-http"]
    assert stdio["env"] == {"DAYTONA_API_URL": api_url(stack), "DAYTONA_API_KEY": stack.api_key}
    assert [stdio["command"], *stdio["args"]] == [str(command), "mcp", "start"]
    assert http["url"] == f"{api_url(stack)}/mcp" and http["headers"]["Authorization"] == f"Bearer {stack.api_key}"

    # The stdio snippet is runnable as it stands, from wherever the agent app runs it.
    async def scenario() -> None:
        params = StdioServerParameters(command=stdio["command"], args=stdio["args"], env=stdio["env"], cwd=tmp_path)
        async with stdio_client(params) as (read, write), ClientSession(read, write) as client:
            await client.initialize()
            assert "create_sandbox" in {t.name for t in (await client.list_tools()).tools}

    run(scenario)


def test_a_stopped_sandbox_is_named_as_such_and_starts_again(stack: Stack) -> None:
    created = stack.api("POST", "/sandbox", json={"name": "mcp-stopped", "labels": {"test": "mcp-stop"}})
    assert created.status_code == 200, created.text
    sandbox_id = created.json()["id"]
    try:
        assert stack.api("POST", f"/sandbox/{sandbox_id}/stop").status_code == 200

        async def scenario() -> None:
            async with session(stack, "http") as client:
                stopped = await failure(client, "execute_command", sandbox_id=sandbox_id, command="true")
                assert "is stopped" in stopped and "start_sandbox" in stopped, stopped
                by_name = await failure(client, "execute_command", sandbox_id="mcp-stopped", command="true")
                assert f"is the name of sandbox {sandbox_id}" in by_name, by_name
                assert (await call_json(client, "start_sandbox", sandbox_id=sandbox_id))["state"] == "started"
                assert "exit code: 0" in await call(client, "execute_command", sandbox_id=sandbox_id, command="true")

        run(scenario)
    finally:
        stack.api("DELETE", f"/sandbox/{sandbox_id}")


def test_an_unreachable_control_plane_is_a_tool_error_that_says_so() -> None:
    async def scenario() -> None:
        url = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
        params = StdioServerParameters(command=sys.executable, args=["-m", "mcpserver", "start"], cwd=REPO_ROOT,
                                       env={"DAYTONA_API_URL": url, "DAYTONA_API_KEY": "dtn_" + "1" * 64})
        async with stdio_client(params) as (read, write), ClientSession(read, write) as client:
            await client.initialize()
            assert (await client.list_tools()).tools  # the server itself is up
            for tool, arguments in (("create_sandbox", {}), ("execute_command", {"sandbox_id": "0123456789ab",
                                                                                 "command": "true"})):
                message = await failure(client, tool, **arguments)
                assert "cannot reach" in message and "main job" in message, message

    run(scenario)
