"""Daytona's front door against the real main job (`./scripts/start`): the official SDK's
`Daytona(DaytonaConfig(api_url=..., api_key=...))` creates, runs code in, lists, stops,
starts and deletes sandboxes through `http://localhost:PORT/api`, unchanged."""

from __future__ import annotations

import json
import os
import stat

import httpx
import pytest

from tests.controlplane_helpers import api_url, daytona, extra_key, key_command, stack_fixture
from tests.runtime_helpers import Stack, needs_bwrap

pytestmark = needs_bwrap


stack = stack_fixture("cp")  # on SQLite and on PostgreSQL


def test_banner_prints_ready_to_copy_daytona_settings(stack: Stack) -> None:
    key = stack.api_key
    assert f"DAYTONA_API_URL=http://localhost:{stack.port}/api" in stack.banner_lines
    assert f"DAYTONA_API_KEY={key}" in stack.banner_lines
    assert key.startswith("dtn_") and len(key) == 4 + 64
    assert stat.S_IMODE(os.stat(stack.state_dir / "api-key").st_mode) == 0o600
    if "CONTROLPLANE_DATABASE_URL" not in stack.env:  # SQLite, the default store
        assert stat.S_IMODE(os.stat(stack.state_dir / "controlplane.db").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(stack.state_dir / "control").st_mode) == 0o700


def test_create_code_run_stop_start_delete_through_the_official_sdk(stack: Stack) -> None:
    from daytona import DaytonaNotFoundError

    d = daytona(stack)
    sandbox = d.create()
    assert sandbox.state == "started"
    assert sandbox.labels["code-toolbox-language"] == "python"
    assert sandbox.toolbox_proxy_url == f"http://localhost:{stack.port}/toolbox"
    assert sandbox.process.code_run("print(1)").result.strip() == "1"
    assert sandbox.id in [s.id for s in d.list()]
    assert d.get(sandbox.id).id == sandbox.id
    assert d.get(sandbox.name).id == sandbox.id
    sandbox.stop()
    assert sandbox.state == "stopped"
    assert d.get(sandbox.id).state == "stopped"
    sandbox.start()
    assert sandbox.state == "started"
    assert sandbox.process.exec("echo again").result.strip() == "again"
    sandbox.delete()
    with pytest.raises(DaytonaNotFoundError, match="not found"):
        d.get(sandbox.id)
    assert sandbox.id not in [s.id for s in d.list()]


def test_a_bad_key_is_a_401_in_daytonas_envelope(stack: Stack) -> None:
    from daytona import DaytonaAuthenticationError

    with pytest.raises(DaytonaAuthenticationError):
        daytona(stack, key="dtn_" + "0" * 64).get("anything")
    response = httpx.get(f"{stack.url}/api/sandbox", headers={"Host": f"localhost:{stack.port}"})
    assert response.status_code == 401
    body = response.json()
    assert body["statusCode"] == 401 and body["source"] == "DAYTONA_API" and body["path"] == "/api/sandbox"
    assert "Authorization: Bearer" in body["message"]


def test_the_proxy_learns_started_sandboxes_and_key_hashes_from_the_control_plane(stack: Stack) -> None:
    d = daytona(stack)
    sandbox = d.create()
    try:
        registry = json.loads((stack.state_dir / "registry.json").read_text())
        assert stat.S_IMODE(os.stat(stack.state_dir / "registry.json").st_mode) == 0o600
        entry = registry["sandboxes"][sandbox.id]
        assert entry["organization"] == sandbox.organization_id and entry["url"].startswith("unix:")
        assert stack.api_key not in json.dumps(registry)  # hashes only
        assert sandbox.organization_id in registry["api_keys"].values()
    finally:
        sandbox.delete()
    registry = json.loads((stack.state_dir / "registry.json").read_text())
    assert sandbox.id not in registry["sandboxes"]


def toolbox_get(stack: Stack, sandbox_id: str, key: str) -> httpx.Response:
    return httpx.get(f"{stack.url}/toolbox/{sandbox_id}/version", timeout=10,
                     headers={"Authorization": f"Bearer {key}", "Host": f"localhost:{stack.port}"})


def test_a_new_key_works_at_once_and_a_revoked_one_stops_at_once(stack: Stack) -> None:
    """No wait anywhere: the key command returns once the proxy has taken (or dropped) the key."""
    from daytona import DaytonaAuthenticationError, DaytonaError

    sandbox = daytona(stack).create()
    try:
        key = extra_key(stack, "default")  # the organization of `sandbox`
        assert toolbox_get(stack, sandbox.id, key).status_code == 200
        mine = daytona(stack, key).get(sandbox.id)  # the SDK: /api, then the toolbox through the proxy
        assert mine.process.exec("echo at once").result.strip() == "at once"
        mcp = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
               "params": {"name": "execute_command", "arguments": {"sandbox_id": sandbox.id, "command": "echo mcp"}}}
        answer = httpx.post(f"{stack.url}/api/mcp", json=mcp, timeout=60, headers={
            "Authorization": f"Bearer {key}", "Host": f"localhost:{stack.port}",
            "Accept": "application/json, text/event-stream"})
        assert answer.status_code == 200 and answer.json()["result"]["isError"] is False, answer.text
        assert "mcp" in answer.json()["result"]["content"][0]["text"]

        revoked = key_command(stack, "revoke", "-", stdin=key + "\n")  # from stdin: not in `ps`
        assert revoked.returncode == 0, revoked.stderr
        refused = toolbox_get(stack, sandbox.id, key)
        assert refused.status_code == 401 and refused.headers["x-proxy-error"] == "toolbox-auth-required"
        with pytest.raises(DaytonaError):
            mine.process.exec("echo refused")
        with pytest.raises(DaytonaAuthenticationError):
            daytona(stack, key).get(sandbox.id)
        assert httpx.post(f"{stack.url}/api/mcp", json=mcp, timeout=60, headers={
            "Authorization": f"Bearer {key}", "Host": f"localhost:{stack.port}"}).status_code == 401
        # The banner's key, which the same organization still has, is untouched.
        assert toolbox_get(stack, sandbox.id, stack.api_key).status_code == 200
        again = key_command(stack, "revoke", key)
        assert again.returncode == 1 and "no such API key" in again.stderr
        bad = key_command(stack, "create", "--organization", " ")
        assert bad.returncode == 1 and "1 to 255 characters" in bad.stderr
        # The key routes are the control socket's alone: the proxy never forwards them.
        for path in ("/runtime/api-keys", "/api/../runtime/api-keys", "/api/%2E%2E/runtime/api-keys"):
            outside = httpx.post(f"{stack.url}{path}", json={"organization": "default"}, timeout=10,
                                 headers={"Host": f"localhost:{stack.port}", "Authorization": f"Bearer {stack.api_key}"})
            assert outside.status_code in (400, 404) and "dtn_" not in outside.text, (path, outside.text)
    finally:
        sandbox.delete()


def test_another_organizations_sandbox_is_a_404_everywhere(stack: Stack) -> None:
    from daytona import DaytonaNotFoundError

    mine = daytona(stack).create()
    other_key = extra_key(stack, "other-team")
    theirs_client = daytona(stack, other_key)
    theirs = theirs_client.create()
    try:
        assert theirs.organization_id != mine.organization_id
        # Their own sandbox works for them, through the proxy's toolbox path too.
        assert theirs.process.exec("echo ours").result.strip() == "ours"
        assert toolbox_get(stack, theirs.id, other_key).status_code == 200
        # Mine does not exist for them: the SDK, the REST API and the proxy all say 404.
        with pytest.raises(DaytonaNotFoundError, match="not found"):
            theirs_client.get(mine.id)
        with pytest.raises(DaytonaNotFoundError):
            theirs_client.get(mine.name)
        assert mine.id not in [s.id for s in theirs_client.list()]
        assert theirs.id not in [s.id for s in daytona(stack).list()]
        headers = {"Authorization": f"Bearer {other_key}", "Host": f"localhost:{stack.port}"}
        for method, path in (("DELETE", ""), ("POST", "/stop"), ("POST", "/start"), ("POST", "/autostop/1"),
                             ("GET", "/ports/3000/preview-url"), ("PUT", "/labels")):
            response = httpx.request(method, f"{stack.url}/api/sandbox/{mine.id}{path}", headers=headers,
                                     json={"labels": {"x": "y"}} if method == "PUT" else None, timeout=30)
            assert response.status_code == 404, (method, path, response.text)
        foreign = toolbox_get(stack, mine.id, other_key)
        unknown = toolbox_get(stack, "0123456789ab", other_key)
        assert foreign.status_code == unknown.status_code == 404
        assert foreign.headers["x-proxy-error"] == unknown.headers["x-proxy-error"] == "sandbox-not-found"
        assert foreign.json()["message"].replace(mine.id, "ID") == unknown.json()["message"].replace("0123456789ab", "ID")
        # ... and the sandbox was not touched.
        assert mine.process.exec("echo still mine").result.strip() == "still mine"
        assert daytona(stack).get(mine.id).labels == mine.labels
    finally:
        mine.delete()
        theirs.delete()


def test_bad_input_raises_the_sdks_precise_exceptions_and_creates_nothing(stack: Stack) -> None:
    from daytona import (
        CreateSandboxFromImageParams,
        CreateSandboxFromSnapshotParams,
        DaytonaConflictError,
        DaytonaError,
        DaytonaNotFoundError,
        DaytonaValidationError,
    )

    d = daytona(stack)
    before = {s.id for s in d.list()}
    with pytest.raises(DaytonaValidationError, match="Snapshot no-such-snapshot not found"):
        d.create(CreateSandboxFromSnapshotParams(snapshot="no-such-snapshot"))
    # The SDK's message carries the reason only when it polled (a Socket.IO event updates
    # the state alone); the sandbox, kept as upstream keeps it, always does.
    with pytest.raises(DaytonaError, match="(?i)build_failed"):
        d.create(CreateSandboxFromImageParams(image="debian:12"))
    failed = [s for s in d.list() if s.state == "build_failed"]
    assert failed and "cannot pull debian:12" in failed[0].error_reason  # docker.io: unreachable here
    for sandbox in failed:
        d.delete(sandbox)
    named = d.create(CreateSandboxFromSnapshotParams(name="only-one"))
    try:
        with pytest.raises(DaytonaConflictError, match="already exists"):
            d.create(CreateSandboxFromSnapshotParams(name="only-one"))
        named.stop()
        with pytest.raises(DaytonaValidationError, match="Cannot stop"):
            named.stop()
        # The SDK refuses a negative auto-stop itself; the server does too.
        raw = httpx.post(f"{stack.url}/api/sandbox/{named.id}/autostop/-1", timeout=10,
                         headers={"Authorization": f"Bearer {stack.api_key}", "Host": f"localhost:{stack.port}"})
        assert raw.status_code == 400 and "must be 0 or more" in raw.json()["message"]
    finally:
        named.delete()
    with pytest.raises(DaytonaNotFoundError):
        d.get("no-such-sandbox")
    headers = {"Authorization": f"Bearer {stack.api_key}", "Host": f"localhost:{stack.port}"}
    for body in ({"cpu": -1}, {"memory": 0}, {"disk": 10_000}, {"cpu": 1.5}, {"labels": {"a": 1}},
                 {"env": "A=1"}, {"public": "yes"}, {"name": ""}):
        response = httpx.post(f"{stack.url}/api/sandbox", json=body, headers=headers, timeout=10)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["source"] == "DAYTONA_API"
    assert {s.id for s in d.list()} == before
    assert sorted(p.name for p in (stack.state_dir / "sandboxes").iterdir()) == sorted(before)


def test_labels_intervals_public_preview_and_pagination(stack: Stack) -> None:
    from daytona import CreateSandboxFromSnapshotParams, ListSandboxesQuery

    d = daytona(stack)
    a = d.create(CreateSandboxFromSnapshotParams(labels={"team": "red"}, auto_stop_interval=30))
    b = d.create(CreateSandboxFromSnapshotParams(labels={"team": "blue"}, public=True))
    try:
        assert a.auto_stop_interval == 30 and a.labels == {"team": "red", "code-toolbox-language": "python"}
        assert b.public is True
        assert [s.id for s in d.list(ListSandboxesQuery(labels={"team": "red"}))] == [a.id]
        a.set_labels({"team": "green"})
        # Replaced, but the language label the SDK reads on every get is kept.
        assert d.get(a.id).labels == {"team": "green", "code-toolbox-language": "python"}
        assert a.labels == {"team": "green", "code-toolbox-language": "python"}
        a.set_autostop_interval(0)
        a.set_auto_archive_interval(60)
        a.set_auto_delete_interval(-1)
        fresh = d.get(a.id)
        assert (fresh.auto_stop_interval, fresh.auto_archive_interval, fresh.auto_delete_interval) == (0, 60, -1)
        a.set_public(True)
        assert d.get(a.id).public is True
        link = a.get_preview_link(3000)
        assert link.url == f"http://3000-{a.id}.localhost:{stack.port}" and link.token
        a.refresh_activity()
        # Pages of one: the SDK follows nextCursor and sees both, newest first.
        assert [s.id for s in d.list(ListSandboxesQuery(limit=1))][:2] == [b.id, a.id]
    finally:
        a.delete()
        b.delete()


def test_async_sdk_front_door(stack: Stack) -> None:
    import asyncio

    from daytona import AsyncDaytona, DaytonaConfig

    async def main() -> None:
        async with AsyncDaytona(DaytonaConfig(api_url=api_url(stack), api_key=stack.api_key)) as d:
            sandbox = await d.create()
            assert sandbox.state == "started"
            assert (await sandbox.process.code_run("print(6 * 7)")).result.strip() == "42"
            await sandbox.stop()
            await sandbox.start()
            assert (await d.get(sandbox.id)).state == "started"
            await sandbox.delete()

    asyncio.run(main())


def test_concurrent_creates_all_succeed_with_unique_ids_and_names(stack: Stack) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from daytona import CreateSandboxFromSnapshotParams, Sandbox

    d = daytona(stack)

    def create(i: int) -> Sandbox:
        return d.create(CreateSandboxFromSnapshotParams(name=f"parallel-{i}"), timeout=120)

    with ThreadPoolExecutor(6) as pool:
        sandboxes = list(pool.map(create, range(6)))
    try:
        assert all(s.state == "started" for s in sandboxes)
        assert len({s.id for s in sandboxes}) == 6
        results = [s.process.exec("echo $DAYTONA_SANDBOX_ID").result.strip() for s in sandboxes]
        assert results == [s.id for s in sandboxes]
    finally:
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda s: s.delete(), sandboxes))
    assert not any(s.name.startswith("parallel-") for s in d.list())


def test_websocket_upgrades_under_api_reach_the_control_plane(stack: Stack) -> None:
    """The proxy relays /api WebSockets to the control plane, which answers them itself: it
    serves Socket.IO at /api/socket.io (tests/test_controlplane_events.py) and refuses a
    WebSocket anywhere else under /api."""
    import socket

    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    sock = socket.create_connection(("127.0.0.1", stack.port), timeout=10)
    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://localhost:{stack.port}/api/sandbox?EIO=4&transport=websocket", sock=sock,
                open_timeout=10)
    response = refused.value.response
    assert response.status_code == 403
    assert response.headers["x-proxy-error"] == "websocket-rejected"
    assert b"control plane" in response.body


def test_a_sandbox_cannot_point_the_proxy_at_a_host_socket(stack: Stack) -> None:
    """The attack: replace the daemon's socket, where the proxy connects, with a symlink to
    the control plane's socket (or any host socket). The socket lives in STATE/sockets
    (0700, the state root is a tmpfs inside every sandbox), so there is nowhere to plant
    it; and the proxy never follows a symlink to a Unix upstream anyway
    (tests/test_unix_upstream.py)."""
    sandbox = daytona(stack).create()
    try:
        registry = json.loads((stack.state_dir / "registry.json").read_text())
        socket_path = registry["sandboxes"][sandbox.id]["url"][len("unix:"):]
        control = stack.state_dir / "control" / "api.sock"
        attempt = sandbox.process.exec(
            f"ls -la {os.path.dirname(socket_path)} 2>&1; ln -s {control} {socket_path}.evil 2>&1 && "
            f"mv -T -f {socket_path}.evil {socket_path} 2>&1 && echo swapped; ls /run/toolbox 2>&1").result
        assert "swapped" not in attempt, attempt
        assert sandbox.process.exec("echo still served").result.strip() == "still served"
        response = toolbox_get(stack, sandbox.id, stack.api_key)
        assert response.status_code == 200 and response.json().get("source") != "DAYTONA_API"
        assert os.path.realpath(socket_path) == socket_path  # still the daemon's own socket
    finally:
        sandbox.delete()
