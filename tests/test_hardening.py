"""Hostile clients and faults against the daemon and the proxy, over real sockets.

Every case ends in a clear 4xx or a clean close, and the server keeps serving. The
header/body deadlines are shortened to 1 s here through the environment
(TOOLBOX_HTTP_HEADER_TIMEOUT / TOOLBOX_HTTP_BODY_TIMEOUT, toolbox/protocol.py).
The long load run lives in stress/load.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
import pytest

from tests.helpers import RunningDaemon, free_port, sdk_process, start_daemon
from tests.proxy_helpers import API_KEY, AUTH, App, Proxy, start_app, start_proxy

FAST = {"TOOLBOX_HTTP_HEADER_TIMEOUT": "1", "TOOLBOX_HTTP_BODY_TIMEOUT": "1"}


@dataclass
class Stack:
    daemon: RunningDaemon
    app: App
    proxy: Proxy

    @property
    def daemon_port(self) -> int:
        return int(self.daemon.url.rsplit(":", 1)[1])

    @property
    def preview_host(self) -> bytes:
        return f"{self.app.port}-sbx-test.preview.test".encode()

    def port(self, target: str) -> int:
        return self.daemon_port if target == "daemon" else self.proxy.port


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("hardening")
    daemon = start_daemon(tmp / "daemon", extra_env=FAST)
    app = start_app()
    proxy = start_proxy(tmp, {"sbx-test": {"url": daemon.url, "public": True}}, extra_env=FAST)
    yield Stack(daemon, app, proxy)
    proxy.stop()
    app.stop()
    daemon.stop()


def exchange(port: int, data: bytes, *, timeout: float = 5.0) -> tuple[bytes, float]:
    """Send raw bytes, read until the server closes; returns what came back and how long it took."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(timeout)
        if data:
            sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    return received, time.monotonic() - started


def fd_targets(pid: int) -> list[str]:
    targets = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{name}"))
        except FileNotFoundError:
            pass
    return targets


def wait_until(predicate: Callable[[], object], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return bool(predicate())


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


# -- slow and oversized requests ---------------------------------------------------------------

TARGETS = ["daemon", "proxy"]


@pytest.mark.parametrize("target", TARGETS)
def test_a_silent_connection_is_closed(stack: Stack, target: str) -> None:
    received, took = exchange(stack.port(target), b"")
    assert received == b"" and took < 4


@pytest.mark.parametrize("target", TARGETS)
def test_slow_headers_get_408(stack: Stack, target: str) -> None:
    received, took = exchange(stack.port(target), b"GET /version HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    assert received.startswith(b"HTTP/1.1 408 ") and b"headers did not arrive" in received
    assert took < 4


@pytest.mark.parametrize("target", TARGETS)
def test_dripped_headers_do_not_extend_the_deadline(stack: Stack, target: str) -> None:
    started = time.monotonic()
    closed = False
    with socket.create_connection(("127.0.0.1", stack.port(target))) as sock:
        sock.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\nX-Drip: ")
        for _ in range(40):
            try:
                sock.sendall(b"a")
                time.sleep(0.2)
                sock.recv(1024, socket.MSG_DONTWAIT | socket.MSG_PEEK)  # the 408, or b"" at close
                closed = True
                break
            except BlockingIOError:  # nothing from the server yet
                continue
            except (ConnectionResetError, BrokenPipeError):
                closed = True
                break
    assert closed and time.monotonic() - started < 4


@pytest.mark.parametrize("target", TARGETS)
def test_oversized_headers_get_431_and_normal_ones_pass(stack: Stack, target: str) -> None:
    pid = (stack.daemon if target == "daemon" else stack.proxy).process.pid
    before = rss_kib(pid)
    received, _ = exchange(stack.port(target), b"GET /version HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")  # one read
    assert received.startswith(b"HTTP/1.1 431 ")
    hung_up = False
    with socket.create_connection(("127.0.0.1", stack.port(target))) as sock:  # a long stream of headers
        sock.settimeout(5)
        sock.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n")
        try:
            for _ in range(1000):
                sock.sendall(b"X-More: " + b"b" * 1000 + b"\r\n")
            reply = sock.recv(65536)  # a timeout here fails the test: the server kept reading
            hung_up = reply == b"" or reply.startswith(b"HTTP/1.1 431 ")
        except (ConnectionResetError, BrokenPipeError):
            hung_up = True
    assert hung_up
    assert rss_kib(pid) - before < 8 * 1024
    host = stack.preview_host if target == "proxy" else b"x"
    path = b"/info/ok" if target == "proxy" else b"/version"
    ok, _ = exchange(stack.port(target), b"GET " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\nCookie: "
                     + b"c" * 16_000 + b"\r\nConnection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize("target", TARGETS)
def test_deadlines_leave_honest_clients_alone(stack: Stack, target: str) -> None:
    """Keep-alive idling, a slow app and a long upload all outlast the 1 s deadlines."""
    with socket.create_connection(("127.0.0.1", stack.port(target))) as sock:
        sock.settimeout(10)
        stream = sock.makefile("rb")
        for _ in range(2):
            sock.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
            assert stream.readline().startswith(b"HTTP/1.1 ")
            length = 0
            while (line := stream.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            stream.read(length)
            time.sleep(1.5)  # idle between requests is keep-alive time, not a header deadline
    with httpx.Client(timeout=30) as client:
        if target == "proxy":
            base, headers = stack.proxy.url, {"Host": stack.preview_host.decode()}
        else:
            base, headers = f"{stack.daemon.url}/proxy/{stack.app.port}", {}
        assert client.get(f"{base}/slow", params={"s": "2"}, headers=headers).text == "slow done"

        def body() -> Iterator[bytes]:
            for _ in range(32):
                yield b"u" * (1 << 20)

        counted = client.post(f"{base}/count", content=body(), headers=headers)
        assert counted.json()["size"] == 32 << 20


def test_slow_body_gets_408_and_no_file(stack: Stack) -> None:
    target = stack.daemon.workdir / "slow-body.bin"
    request = (b"POST /files/upload-v2?path=" + str(target).encode() + b" HTTP/1.1\r\nHost: x\r\n"
               b"Content-Length: 1000\r\n\r\n" + b"z" * 10)
    received, took = exchange(stack.daemon_port, request)
    assert received.startswith(b"HTTP/1.1 408 ") and b"No request body bytes" in received and took < 4
    assert not target.exists()
    # The handler sees the disconnect and removes its temporary file right after.
    assert wait_until(lambda: not [p for p in stack.daemon.workdir.iterdir() if "slow-body" in p.name], 5)


def test_slow_body_through_the_proxy(stack: Stack) -> None:
    request = (b"POST /count HTTP/1.1\r\nHost: " + stack.preview_host + b"\r\nContent-Length: 1000\r\n\r\n" + b"z" * 10)
    received, took = exchange(stack.proxy.port, request)
    assert received.startswith(b"HTTP/1.1 408 ") and took < 4
    with stack.proxy.client() as client:
        assert client.get("/info/after", headers={"Host": stack.preview_host.decode()}).status_code == 200


# -- request smuggling against the proxy -----------------------------------------------------------

SMUGGLED = b"GET /info/smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n"
ATTEMPTS = {
    "cl-te": b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-cl": b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
    "two-cl": b"Content-Length: 0\r\nContent-Length: 60\r\n\r\n",
    "te-list": b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "te-space": b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "te-obfuscated": b"Transfer-Encoding: xchunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
    "bad-chunk-size": b"Transfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n\r\n",
    "lf-only": b"Transfer-Encoding: chunked\n\n0\n\n",
}


@pytest.mark.parametrize("attempt", ATTEMPTS, ids=list(ATTEMPTS))
def test_smuggling_attempts_get_400_and_nothing_reaches_the_app(stack: Stack, attempt: str) -> None:
    host = stack.preview_host
    request = (b"POST /count HTTP/1.1\r\nHost: " + host + b"\r\n" + ATTEMPTS[attempt]
               + SMUGGLED.replace(b"{host}", host))
    received, _ = exchange(stack.proxy.port, request)
    assert received.startswith(b"HTTP/1.1 400 "), received[:200]
    assert received.count(b"HTTP/1.1 ") == 1 and b"smuggled" not in received
    with stack.proxy.client() as client:
        assert client.get("/info/next", headers={"Host": host.decode()}).status_code == 200


# -- faults ------------------------------------------------------------------------------------------

def test_upstream_dies_mid_response(stack: Stack, tmp_path: Path) -> None:
    crashing = start_app()
    try:
        host = f"{crashing.port}-sbx-test.preview.test"
        with stack.proxy.client() as client:
            with pytest.raises(httpx.RemoteProtocolError):  # cut short: never a truncated "success"
                client.get("/crash", headers={"Host": host})
            assert client.get("/info/still-here", headers={"Host": stack.preview_host.decode()}).status_code == 200
            gone = client.get("/info/x", headers={"Host": host, "Accept": "application/json"})
            assert gone.status_code == 502 and gone.headers["x-proxy-error"] == "port-not-open"
    finally:
        crashing.stop()


def test_daemon_killed_and_restarted_behind_the_proxy(tmp_path: Path) -> None:
    from daytona.common.errors import DaytonaError
    from daytona.common.process import SessionExecuteRequest

    from tests.test_proxy_sdk import sdk_client

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    first = start_daemon(tmp_path / "sbx", sandbox_id="phoenix", extra_args=["--port", str(port)])
    proxy = start_proxy(tmp_path, {"phoenix": {"url": url, "public": False}})
    second = None
    try:
        from daytona._sync.process import Process
        from daytona_toolbox_api_client import ProcessApi

        process = Process("python", ProcessApi(sdk_client(proxy, "phoenix")), httpx.Client(timeout=30))
        process.create_session("kept")
        done = process.execute_session_command("kept", SessionExecuteRequest(command="echo persisted; exit 3"))
        assert done.exit_code == 3
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait()
        with pytest.raises(DaytonaError) as meanwhile:
            process.get_session_command_logs("kept", done.cmd_id)
        assert "does not answer" in str(meanwhile.value) and "phoenix" in str(meanwhile.value)
        with pytest.raises(DaytonaError) as direct:  # the SDK pointed at the daemon itself
            sdk_process(first).get_session("kept")
        assert "Connection refused" in str(direct.value)
        second = start_daemon(tmp_path / "sbx", sandbox_id="phoenix", extra_args=["--port", str(port)])
        logs = process.get_session_command_logs("kept", done.cmd_id)
        assert logs.stdout == "persisted\n"
        assert [(c.id, c.exit_code) for c in process.get_session("kept").commands] == [(done.cmd_id, 3)]
    finally:
        proxy.stop()
        first.stop()
        if second is not None:
            second.stop()


def test_client_leaves_mid_upload_through_the_proxy(stack: Stack) -> None:
    folder = stack.daemon.workdir / "half-upload"
    folder.mkdir()
    (folder / "keep.bin").write_bytes(b"old")
    pid = stack.daemon.process.pid
    baseline = len(fd_targets(pid))
    for name in ("keep.bin", "new.bin"):
        path = str(folder / name).encode()
        with socket.create_connection(("127.0.0.1", stack.proxy.port)) as sock:
            sock.sendall(b"POST /toolbox/sbx-test/files/upload-v2?path=" + path + b" HTTP/1.1\r\nHost: x\r\n"
                         b"Authorization: Bearer " + API_KEY.encode() + b"\r\nContent-Length: 50000000\r\n\r\n")
            for _ in range(16):
                sock.sendall(os.urandom(64 * 1024))
            time.sleep(0.3)
    assert wait_until(lambda: sorted(p.name for p in folder.iterdir()) == ["keep.bin"])
    assert (folder / "keep.bin").read_bytes() == b"old"
    assert wait_until(lambda: len(fd_targets(pid)) <= baseline)
    assert not [t for t in fd_targets(pid) if "half-upload" in t]


def test_client_leaves_mid_download_through_the_proxy(stack: Stack) -> None:
    blob = stack.daemon.workdir / "big-download.bin"
    with open(blob, "wb") as fh:
        fh.truncate(200 << 20)  # sparse: large without costing disk
    pid = stack.daemon.process.pid
    baseline = len(fd_targets(pid))
    with socket.create_connection(("127.0.0.1", stack.proxy.port)) as sock:
        sock.sendall(b"GET /toolbox/sbx-test/files/download?path=" + str(blob).encode() + b" HTTP/1.1\r\n"
                     b"Host: x\r\nAuthorization: Bearer " + API_KEY.encode() + b"\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        assert wait_until(lambda: any(t == str(blob) for t in fd_targets(pid)), 5)
    assert wait_until(lambda: not any(t == str(blob) for t in fd_targets(pid)))
    assert wait_until(lambda: len(fd_targets(pid)) <= baseline + 1)  # +1: a pooled proxy connection
    with stack.proxy.client() as client:
        assert client.get("/toolbox/sbx-test/version", headers=AUTH).status_code == 200


def test_disk_full_during_upload_through_the_proxy(stack: Stack) -> None:
    mount_point = stack.daemon.workdir / "full-disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a 1 MiB tmpfs: {mounted.stderr.strip()}")
    try:
        (mount_point / "keep.txt").write_bytes(b"old content")
        with stack.proxy.client() as client:
            response = client.post("/toolbox/sbx-test/files/upload-v2", params={"path": str(mount_point / "keep.txt")},
                                   content=os.urandom(3 << 20), headers=AUTH)
            assert response.status_code == 507 and response.json()["code"] == "INSUFFICIENT_STORAGE"
            assert "no space left" in response.json()["message"].lower()
            assert client.get("/toolbox/sbx-test/version", headers=AUTH).status_code == 200
        assert (mount_point / "keep.txt").read_bytes() == b"old content"
        assert os.listdir(mount_point) == ["keep.txt"]
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_output_at_full_speed_with_a_stalled_reader(stack: Stack) -> None:
    """A follower that never reads must not make the daemon buffer the flood."""
    from daytona.common.process import SessionExecuteRequest

    process = sdk_process(stack.daemon)
    process.create_session("flood")
    pid = stack.daemon.process.pid
    before = rss_kib(pid)
    command = process.execute_session_command(
        "flood", SessionExecuteRequest(command="timeout 4 yes flooding-the-log", run_async=True))

    # A raw WebSocket handshake, then never a read: the kernel buffers fill and stay full.
    with socket.create_connection(("127.0.0.1", stack.daemon_port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(f"GET /process/session/flood/command/{command.cmd_id}/logs?follow=true HTTP/1.1\r\n"
                     "Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        time.sleep(5)
    grown = rss_kib(pid) - before
    assert grown < 48 * 1024, f"daemon RSS grew by {grown} KiB with a stalled follower"
    with stack.daemon.client(timeout=10) as client:
        assert client.get("/version").status_code == 200
    process.delete_session("flood")


# -- hostile bodies, names and frames ----------------------------------------------------------------

def test_huge_json_body_is_413_not_500(stack: Stack) -> None:
    def body() -> Iterator[bytes]:
        yield b'{"command": "'
        for _ in range(64):
            yield b"a" * (1 << 20)
        yield b'"}'

    with stack.daemon.client(timeout=30) as client:
        response = client.post("/process/execute", content=body())
        assert response.status_code == 413 and response.json()["message"]
        assert client.get("/version").status_code == 200


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"a":' * 50_000, b'{"command": "echo \xff\xfe"}',
                                  b'{"command": 1e999999}', b'{"command": "\\ud800"}', b"\x00" * 1000])
def test_hostile_json_is_400(stack: Stack, body: bytes) -> None:
    with stack.daemon.client(timeout=30) as client:
        response = client.post("/process/execute", content=body)
        assert response.status_code == 400 and response.json()["code"] == "INVALID_REQUEST_BODY"
        assert client.get("/version").status_code == 200


def test_deeply_nested_json_in_an_interpreter_frame_is_a_clean_close(stack: Stack) -> None:
    async def send_nested() -> int | None:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{stack.daemon.url}/process/interpreter/execute") as ws:
                await ws.send_str("[" * 100_000)
                await asyncio.wait_for(ws.receive(), 10)
                return ws.close_code

    assert asyncio.run(send_nested()) == 1002


def test_invalid_utf8_names_are_listed_not_500(stack: Stack) -> None:
    folder = stack.daemon.workdir / "latin1"
    folder.mkdir()
    with open(os.path.join(os.fsencode(folder), b"caf\xe9.txt"), "wb") as fh:  # Latin-1, not UTF-8
        fh.write(b"x")
    with stack.daemon.client() as client:
        listing = client.get("/files", params={"path": str(folder)})
        assert listing.status_code == 200 and len(listing.json()) == 1
        name = listing.json()[0]["name"]
        assert name == "caf\ufffd.txt"  # as Go's encoding/json writes an invalid byte
        found = client.get("/files/search", params={"path": str(folder), "pattern": "*"})
        assert found.status_code == 200 and f"{folder}/caf\ufffd.txt" in found.json()["files"]
        download = client.get("/files/download", params={"path": str(folder / name)})
        assert download.status_code < 500
        multipart = client.post("/files/bulk-upload", content=(
            b"--B\r\nContent-Disposition: form-data; name=\"files[0].path\"\r\n\r\n" + str(folder).encode()
            + b"/bad\xff\xfe.txt\r\n--B\r\nContent-Disposition: form-data; name=\"files[0].file\"; "
            b"filename=\"\xff\xfe\"\r\n\r\ndata\r\n--B--\r\n"), headers={"Content-Type": "multipart/form-data; boundary=B"})
        assert multipart.status_code < 500


def ws_handshake(port: int, path: str, host: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101 "), head[:200]
    return sock


@pytest.mark.parametrize("target", TARGETS)
def test_websocket_frame_far_above_the_limit_is_closed_1009(stack: Stack, target: str) -> None:
    """A binary frame announcing 1 GiB: refused from its header, before any payload is buffered."""
    if target == "proxy":
        sock = ws_handshake(stack.proxy.port, "/ws", stack.preview_host.decode())
    else:
        sock = ws_handshake(stack.daemon_port, f"/proxy/{stack.app.port}/ws", "x")
    with sock:
        sock.sendall(bytes([0x82, 0xFF]) + (1 << 30).to_bytes(8, "big") + b"mask" + b"x" * 4096)
        reply = b""
        try:
            while len(reply) < 4:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
        except ConnectionResetError:
            pass
    assert reply[:1] == b"\x88" and int.from_bytes(reply[2:4], "big") == 1009, reply[:40]
    with httpx.Client(timeout=10) as client:
        assert client.get(f"{stack.daemon.url}/version").status_code == 200
        assert client.get(f"{stack.proxy.url}/health").status_code == 200


def test_a_killed_daemons_upload_temp_files_are_removed_at_its_next_start(tmp_path: Path) -> None:
    first = start_daemon(tmp_path, sandbox_id=None)
    folder = first.workdir / "killed-upload"
    folder.mkdir()
    decoy = folder / ".notes.txt.0123456789ab.upload"  # looks like a temp file, but the user's own
    decoy.write_bytes(b"mine")
    second = None
    try:
        port = int(first.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"POST /files/upload-v2?path=killed-upload/big.bin HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Length: 50000000\r\n\r\n" + os.urandom(1 << 20))
            assert wait_until(lambda: any(p.name.startswith(".big.bin.") for p in folder.iterdir()), 5)
            os.kill(first.process.pid, signal.SIGKILL)
            first.process.wait()
        assert len(list(folder.iterdir())) == 2  # the temp file outlived its daemon
        second = start_daemon(tmp_path, sandbox_id=None)
        assert sorted(p.name for p in folder.iterdir()) == [decoy.name]
        with second.client() as client:  # uploads work as before, and leave nothing behind
            assert client.post("/files/upload-v2", params={"path": "killed-upload/big.bin"}, content=b"x").status_code == 200
        assert sorted(p.name for p in folder.iterdir()) == [decoy.name, "big.bin"]
    finally:
        first.stop()
        if second is not None:
            second.stop()
