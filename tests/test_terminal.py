"""The browser terminal: its own port, the PTY API behind it, and a real headless Chromium
typing into it through the proxy."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from tests.cdp import Browser, chromium_path
from tests.helpers import RunningDaemon, free_port, start_daemon
from tests.runtime_helpers import Stack, needs_bwrap, start_stack
from tests.system import reason

EXIT_CONTROL = Subprotocol("X-Daytona-Pty-Exit-Control")
SCREEN = "Array.from(document.querySelectorAll('.xterm-rows > div')).map(r => r.textContent.trimEnd())"


@pytest.fixture
def terminal_daemon(tmp_path: Path) -> Iterator[tuple[RunningDaemon, int]]:
    port = free_port()
    running = start_daemon(tmp_path, extra_env={"TOOLBOX_TERMINAL_PORT": str(port)})
    yield running, port
    running.stop()


def test_terminal_port_serves_the_page_assets_and_only_the_pty_api(terminal_daemon: tuple[RunningDaemon, int]) -> None:
    daemon, port = terminal_daemon
    base = f"http://127.0.0.1:{port}"
    assert _listening_ports(daemon.process.pid) == {int(daemon.url.rsplit(":", 1)[1]), port}
    page = httpx.get(base + "/")
    assert page.status_code == 200 and "assets/vendor/xterm.js" in page.text
    for asset in ("vendor/xterm.js", "vendor/xterm.css", "vendor/addon-fit.js", "terminal.js"):
        assert httpx.get(f"{base}/assets/{asset}").status_code == 200, asset
    assert httpx.get(base + "/api/pty").json() == {"sessions": []}
    # The rest of the Toolbox API is not reachable on the terminal port.
    assert httpx.get(base + "/version").status_code == 404
    assert httpx.get(base + "/files", params={"path": "."}).status_code == 404

    with connect(f"ws://127.0.0.1:{port}/api/pty/create-connect?id=t1&cols=100&rows=30",
                 subprotocols=[EXIT_CONTROL], open_timeout=10) as ws:
        assert "connected" in ws.recv(timeout=10)
        ws.send(b"echo hi-$((40+2))\n")
        out = b""
        while b"hi-42\r\n" not in out:
            frame = ws.recv(timeout=10)
            out += frame if isinstance(frame, bytes) else frame.encode()
    resized = httpx.post(base + "/api/pty/t1/resize", json={"cols": 120, "rows": 40})
    assert resized.status_code == 200 and resized.json()["cols"] == 120
    # Re-attach: the scrollback comes back.
    with connect(f"ws://127.0.0.1:{port}/api/pty/t1/connect", open_timeout=10) as ws:
        out = b""
        while b"hi-42" not in out:
            frame = ws.recv(timeout=10)
            out += frame if isinstance(frame, bytes) else frame.encode()
    # The daemon's own API is unaffected.
    with daemon.client() as client:
        assert [s["id"] for s in client.get("/process/pty").json()["sessions"]] == ["t1"]


def _listening_ports(pid: int) -> set[int]:
    """TCP ports the process listens on (its socket inodes matched in /proc/net/tcp*)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A = LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_terminal_is_off_unless_configured(tmp_path: Path) -> None:
    running = start_daemon(tmp_path)
    try:
        with running.client() as client:
            assert client.get("/version").status_code == 200
        port = int(running.url.rsplit(":", 1)[1])
        assert _listening_ports(running.process.pid) == {port}
    finally:
        running.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("terminal"), pool_size=0)
    yield running
    running.stop()


@needs_bwrap
def test_terminal_always_needs_credentials_even_on_a_public_sandbox(stack: Stack) -> None:
    sandbox_id = stack.cli("create", "--name", "open", "--public")["id"]
    try:
        token = stack.preview_token(sandbox_id)
        assert stack.preview(sandbox_id, 22222).status_code in (401, 403)
        assert stack.preview(sandbox_id, 22222, token=token).status_code == 200
    finally:
        stack.cli("delete", sandbox_id)


@needs_bwrap
@pytest.mark.skipif(chromium_path() is None, reason=reason("chromium"))
def test_echo_hi_in_headless_chromium_through_the_proxy(stack: Stack) -> None:
    sandbox_id = stack.first_id
    token = stack.preview_token(sandbox_id)
    url = f"http://22222-{sandbox_id}.localhost:{stack.port}/?DAYTONA_SANDBOX_AUTH_KEY={token}"
    browser = Browser()
    try:
        browser.navigate(url)
        browser.wait_for("window.sandboxTerminal && document.querySelector('.xterm-rows') !== null")
        # Wait for the shell prompt before typing.
        browser.wait_for(f"{SCREEN}.some(line => line.includes('$'))")
        browser.evaluate("window.sandboxTerminal.focus()")
        browser.type_text("echo hi")
        browser.press_enter()
        screen = browser.wait_for(f"{SCREEN}.includes('hi') && {SCREEN}")
        assert "hi" in screen and any(line.endswith("echo hi") for line in screen)

        # Resize: the browser window shrinks, the PTY follows.
        session = browser.evaluate("sessionStorage.getItem('terminal-session')")
        cols_before = browser.evaluate("window.sandboxTerminal.cols")
        browser.send("Emulation.setDeviceMetricsOverride", width=500, height=400, deviceScaleFactor=1, mobile=False)
        browser.wait_for(f"window.sandboxTerminal.cols < {cols_before}")
        cols = browser.evaluate("window.sandboxTerminal.cols")
        browser.wait_for(f"fetch('api/pty/{session}').then(r => r.json()).then(i => i.cols === {cols})")

        # Reload: the page re-attaches to the same PTY and replays its scrollback.
        browser.send("Page.reload")
        browser.wait_for("document.readyState === 'complete' && window.sandboxTerminal !== undefined")
        assert browser.evaluate("sessionStorage.getItem('terminal-session')") == session
        browser.wait_for(f"{SCREEN}.includes('hi')")
    finally:
        browser.close()


@needs_bwrap
def test_a_terminal_session_leaves_the_logs_clean(stack: Stack, capfd: pytest.CaptureFixture[str]) -> None:
    """What the page does (page, assets, create-connect, re-attach, resize), plus the two
    refusals a session meets (an attach to a PTY that has gone, a WebSocket without
    credentials): the daemon's log and the main job's output gain no ERROR line. uvicorn's
    sansio protocol used to log "ASGI callable returned without completing handshake." for
    every refused upgrade, in the terminal server, the daemon's forwarder and the proxy."""
    import socket

    from tests.runtime_helpers import ws_connect

    sandbox_id = stack.first_id
    token = stack.preview_token(sandbox_id)
    host = f"22222-{sandbox_id}.localhost:{stack.port}"
    log = stack.state_dir / "sandboxes" / sandbox_id / "daemon.log"
    log_before = log.read_text()
    capfd.readouterr()
    with httpx.Client(base_url=stack.url, headers={"Host": host}, timeout=30) as browser:
        opened = browser.get("/", params={"DAYTONA_SANDBOX_AUTH_KEY": token})
        assert opened.status_code == 302
        cookie = opened.headers["set-cookie"].split(";")[0]
        browser.headers["Cookie"] = cookie
        assert browser.get("/").status_code == 200
        assert browser.get("/assets/terminal.js").status_code == 200
        assert browser.get("/api/pty/web-clean").status_code == 404  # the page's existence check
        cookie_header = {"Cookie": cookie, "Origin": f"http://{host}"}
        sock = socket.create_connection(("127.0.0.1", stack.port), timeout=10)
        with connect(f"ws://{host}/api/pty/create-connect?id=web-clean&cols=80&rows=24", sock=sock,
                     subprotocols=[EXIT_CONTROL], additional_headers=cookie_header,
                     open_timeout=10) as ws:
            assert "connected" in ws.recv(timeout=10)
            ws.send(b"echo clean-$((6*7))\n")
            out = b""
            while b"clean-42\r\n" not in out:
                frame = ws.recv(timeout=10)
                out += frame if isinstance(frame, bytes) else frame.encode()
        assert browser.get("/api/pty/web-clean").status_code == 200
        sock = socket.create_connection(("127.0.0.1", stack.port), timeout=10)
        with connect(f"ws://{host}/api/pty/web-clean/connect", sock=sock, open_timeout=10,
                     subprotocols=[EXIT_CONTROL], additional_headers=cookie_header) as ws:
            assert browser.post("/api/pty/web-clean/resize", json={"cols": 100, "rows": 30}).status_code == 200
        # Refused upgrades: a PTY that has gone (404 from the daemon), no credentials (proxy).
        assert browser.delete("/api/pty/web-clean").status_code == 200
        sock = socket.create_connection(("127.0.0.1", stack.port), timeout=10)
        with pytest.raises(InvalidStatus) as refused:
            connect(f"ws://{host}/api/pty/web-clean/connect", sock=sock, open_timeout=10,
                    additional_headers=cookie_header)
        assert refused.value.response.status_code == 404
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(stack, sandbox_id, 22222, "/api/pty/create-connect?id=x")
    assert refused.value.response.status_code in (401, 403)
    time.sleep(0.5)  # a log line would follow the refusal at once
    new_log = log.read_text()[len(log_before):]
    assert "ERROR" not in new_log and "Traceback" not in new_log, new_log
    output = capfd.readouterr()
    assert "ERROR" not in output.err and "Traceback" not in output.err, output.err
