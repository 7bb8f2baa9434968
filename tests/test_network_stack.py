"""Sandbox networking through the main job (issue 16): the official SDK's network fields
and `update_network_settings` applied live, previews in one hop to the sandbox's own
address over HTTP and WebSocket, with apps on 127.0.0.1 still served through the daemon.

Traffic only between the host and namespaces these tests make (tests/net_helpers.py)."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.net_helpers import (
    INTERNET_A, INTERNET_B, INTERNET_HIGH, INTERNET_LOW, UNROUTED_NET, Namespace, internet, is_root, python_command,
)
from tests.runtime_helpers import Stack, needs_bwrap, start_stack, ws_connect

pytestmark = [needs_bwrap, pytest.mark.skipif(not is_root(), reason="sandbox networking needs root and nftables")]

A, B = f"{INTERNET_A}:80", f"{INTERNET_B}:80"

# Answers with the peer address it saw, so a test can tell the one hop (the host's end of
# the sandbox's veth) from the daemon's route (127.0.0.1); /ws echoes.
APP = r'''
import sys
from aiohttp import web

async def index(request):
    return web.Response(text="peer " + request.remote + " host " + request.host)

async def echo(request):
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        await ws.send_str("echo:" + message.data + " peer " + request.remote)
    return ws

app = web.Application()
app.add_routes([web.get("/", index), web.get("/ws", echo)])
web.run_app(app, host=sys.argv[1], port=int(sys.argv[2]), print=None)
'''

PROBE = r'''
import socket, sys
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        s = socket.create_connection((host, int(port)), timeout=1.5); print("open")
    except OSError as e:
        print("closed")
'''


@pytest.fixture(scope="module")
def inet() -> Iterator[Namespace]:
    ns = internet()
    try:
        yield ns
    finally:
        ns.close()


def _env(**extra: str) -> dict[str, str]:
    return {"RUNTIME_SANDBOX_NETWORK": f"10.213.{random.randrange(128, 250)}.0/24",
            "RUNTIME_SANDBOX_DNS": INTERNET_A, "RUNTIME_NETWORK_BLOCK_ALL": "0", **extra}


@pytest.fixture(scope="module")
def stack(inet: Namespace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("netstack"), "--no-sandbox", pool_size=1, extra_env=_env())
    yield running
    running.stop()


def daytona(stack: Stack) -> Any:
    from daytona import Daytona, DaytonaConfig

    return Daytona(DaytonaConfig(api_url=f"http://localhost:{stack.port}/api", api_key=stack.api_key))


def probe(sandbox: Any, *targets: str) -> list[str]:
    result = sandbox.process.exec(python_command(PROBE, *targets), timeout=20)
    assert result.exit_code == 0, result.result
    return list(result.result.split())


def test_sdk_network_settings_apply_live(stack: Stack) -> None:
    from daytona import CreateSandboxFromSnapshotParams

    d = daytona(stack)
    sandbox = d.create()
    try:
        assert sandbox.network_block_all is False  # Daytona's default: egress on
        assert probe(sandbox, A, B) == ["open", "open"]
        sandbox.update_network_settings(network_block_all=True)
        assert sandbox.network_block_all is True
        assert probe(sandbox, A) == ["closed"]
        sandbox.update_network_settings(network_allow_list=INTERNET_HIGH)
        assert (sandbox.network_block_all, sandbox.network_allow_list) == (False, INTERNET_HIGH)
        assert probe(sandbox, A, B) == ["closed", "open"]
        sandbox.update_network_settings(network_block_all=False)  # clears the list too
        assert sandbox.network_allow_list is None
        assert probe(sandbox, A, B) == ["open", "open"]
        assert d.get(sandbox.id).network_block_all is False
    finally:
        d.delete(sandbox)
    listed = d.create(CreateSandboxFromSnapshotParams(network_allow_list=INTERNET_LOW))
    try:
        assert listed.network_allow_list == INTERNET_LOW
        assert probe(listed, A, B) == ["open", "closed"]
    finally:
        d.delete(listed)


@pytest.mark.parametrize("body", [{"networkAllowList": "10.0.0.0/40"}, {"networkAllowList": "nope"},
                                  {"networkAllowList": ",".join(f"{UNROUTED_NET}.{i}/32" for i in range(11))},
                                  {"domainAllowList": "not a domain"},
                                  {"domainAllowList": "*.com"}])
def test_bad_network_settings_are_a_400_and_change_nothing(stack: Stack, body: dict[str, str]) -> None:
    created = stack.api("POST", "/sandbox", json=body)
    assert created.status_code == 400, created.text
    assert created.json()["message"]
    d = daytona(stack)
    sandbox = d.create()
    try:
        response = stack.api("POST", f"/sandbox/{sandbox.id}/network-settings", json=body)
        assert response.status_code == 400, response.text
        assert stack.api("GET", f"/sandbox/{sandbox.id}").json().get("networkAllowList") is None
        assert probe(sandbox, A) == ["open"]
    finally:
        d.delete(sandbox)
    assert stack.api("POST", "/sandbox/nosuchsandbox/network-settings",
                     json={"networkBlockAll": True}).status_code == 404


def _start_app(sandbox: Any, host: str, port: int) -> None:
    sandbox.fs.upload_file(APP.encode(), "peerapp.py")
    sandbox.process.create_session(f"app-{port}")
    from daytona import SessionExecuteRequest

    sandbox.process.execute_session_command(
        f"app-{port}", SessionExecuteRequest(command=f"python3 peerapp.py {host} {port}", run_async=True))


def _preview_when_up(stack: Stack, sandbox: Any, port: int, token: str) -> httpx.Response:
    # Listening first (seen from inside), so the first preview is not a daemon's retry.
    deadline = time.monotonic() + 30
    while probe(sandbox, f"127.0.0.1:{port}") != ["open"] and time.monotonic() < deadline:
        time.sleep(0.2)
    return stack.preview(sandbox.id, port, token=token)


def test_previews_go_in_one_hop_and_loopback_apps_through_the_daemon(stack: Stack) -> None:
    d = daytona(stack)
    sandbox = d.create()
    try:
        token = stack.preview_token(sandbox.id)
        _start_app(sandbox, "0.0.0.0", 3000)
        _start_app(sandbox, "127.0.0.1", 3001)
        direct = _preview_when_up(stack, sandbox, 3000, token)
        assert direct.status_code == 200, direct.text
        # The app saw the host's end of the sandbox's veth: no daemon in between. And the
        # Host it would have seen through the daemon.
        import ipaddress
        import json

        entry = json.loads((stack.state_dir / "registry.json").read_text())["sandboxes"][sandbox.id]
        peer = direct.text.split()[1]
        assert peer == str(ipaddress.IPv4Address(entry["address"]) - 1), (direct.text, entry)
        assert direct.text.endswith("host localhost:3000")
        loopback = _preview_when_up(stack, sandbox, 3001, token)
        assert loopback.status_code == 200, loopback.text
        assert loopback.text.startswith("peer 127.0.0.1 "), loopback.text
        with ws_connect(stack, sandbox.id, 3000, "/ws", token=token) as ws:
            ws.send("ping")
            assert ws.recv(timeout=10) == f"echo:ping peer {peer}"
        with ws_connect(stack, sandbox.id, 3001, "/ws", token=token) as ws:
            ws.send("ping")
            assert ws.recv(timeout=10) == "echo:ping peer 127.0.0.1"
        # Without credentials the one hop is refused just the same.
        assert stack.preview(sandbox.id, 3000).status_code in (401, 403)
        # A port nothing listens on: the daemon's answer, as before.
        closed = stack.preview(sandbox.id, 3999, token=token)
        assert closed.status_code == 502 and closed.headers.get("x-proxy-error") == "port-not-open"
    finally:
        d.delete(sandbox)


def test_block_all_by_default_is_a_runtime_option(inet: Namespace, tmp_path_factory: pytest.TempPathFactory) -> None:
    locked = start_stack(tmp_path_factory.mktemp("locked"), "--no-sandbox", pool_size=0,
                         extra_env=_env(RUNTIME_NETWORK_BLOCK_ALL="1"))
    try:
        d = daytona(locked)
        sandbox = d.create()
        assert sandbox.network_block_all is True
        assert probe(sandbox, A) == ["closed"]
        sandbox.update_network_settings(network_block_all=False)
        assert probe(sandbox, A) == ["open"]
        # Previews still reach a blocked sandbox: replies to the host side pass.
        sandbox.update_network_settings(network_block_all=True)
        token = locked.preview_token(sandbox.id)
        _start_app(sandbox, "0.0.0.0", 3000)
        response = _preview_when_up(locked, sandbox, 3000, token)
        assert response.status_code == 200 and response.text.startswith("peer 10.213."), response.text
        d.delete(sandbox)
    finally:
        locked.stop()
