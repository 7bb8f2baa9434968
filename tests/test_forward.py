"""The daemon's `/proxy/{port}/{path}` route against real upstream apps."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import pytest

from tests.helpers import RunningDaemon, free_port, start_daemon
from tests.proxy_apps import GZIP_BODY
from tests.proxy_helpers import App, ipv6_loopback, one_shot_upstream, start_app


def test_raw_path_query_and_headers_reach_the_app(daemon: RunningDaemon, app: App) -> None:
    with daemon.client() as client:
        response = client.get(f"/proxy/{app.port}/info/a%2Fb%20c/(local)/%40x?q=%41+b&z&q=2",
                              headers={"X-Forwarded-For": "6.6.6.6", "Connection": "keep-alive, X-Secret",
                                       "X-Secret": "hop", "Te": "trailers"})
    assert response.status_code == 200
    seen = response.json()
    assert seen["raw_path"] == "/info/a%2Fb%20c/(local)/%40x"
    assert seen["query"] == "q=%41+b&z&q=2"
    headers = dict(seen["headers"])
    assert headers["host"] == f"localhost:{app.port}"
    assert headers["x-forwarded-for"] == "6.6.6.6"  # kept, not appended to
    assert "x-secret" not in headers and "te" not in headers  # named in Connection / hop-by-hop


def test_sandbox_prefix_and_bare_port(daemon: RunningDaemon, app: App) -> None:
    with daemon.client() as client:
        assert client.get(f"/sbx-test/proxy/{app.port}/info/x").json()["raw_path"] == "/info/x"
        assert client.get(f"/proxy/{app.port}").text == "app 404"  # `/proxy/{port}` is `/`


@pytest.mark.parametrize("port", ["80@evil.example", "0", "65536", "abc", "%33000", "-1", "3000x"])
def test_port_must_be_numeric_in_range(daemon: RunningDaemon, port: str) -> None:
    with daemon.client() as client:
        response = client.get(f"/proxy/{port}/x")
    assert response.status_code == 400
    assert response.headers["x-proxy-error"] == "invalid-port"
    assert response.json()["code"] == "BAD_REQUEST"


def test_closed_port_is_a_502_that_says_so(daemon: RunningDaemon) -> None:
    with daemon.client() as client:
        response = client.get(f"/proxy/{free_port()}/")
    assert response.status_code == 502
    assert response.headers["x-proxy-error"] == "port-not-open"
    assert "nothing is listening on port" in response.json()["message"]


def test_app_starting_late_is_waited_for(daemon: RunningDaemon) -> None:
    port = free_port()
    one_shot_upstream(port, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nlate", delay=0.4)
    with daemon.client(timeout=30) as client:
        response = client.get(f"/proxy/{port}/")
    assert (response.status_code, response.text) == (200, "late")


def test_post_is_not_retried_on_a_closed_port(daemon: RunningDaemon) -> None:
    with daemon.client() as client:
        started = time.monotonic()
        response = client.post(f"/proxy/{free_port()}/", content=b"side effect")
    assert response.status_code == 502 and time.monotonic() - started < 0.5


def test_sse_flushes_each_event_at_once(daemon: RunningDaemon, app: App) -> None:
    with daemon.client(timeout=10) as client, client.stream("GET", f"/proxy/{app.port}/sse") as response:
        started = time.monotonic()
        chunks = response.iter_raw()
        first = next(chunks)
        assert b"data: first" in first
        assert time.monotonic() - started < 1.0  # not held until the stream ends
        rest = b"".join(chunks)
        assert b"data: second" in rest


def test_compressed_body_untouched(daemon: RunningDaemon, app: App) -> None:
    with daemon.client() as client, client.stream("GET", f"/proxy/{app.port}/gzip") as response:
        raw = b"".join(response.iter_raw())
    assert response.headers["content-encoding"] == "gzip"
    assert raw == GZIP_BODY
    assert gzip.decompress(raw).startswith(b"compressed hello")


def test_upload_streams_in_chunks(daemon: RunningDaemon, app: App) -> None:
    digest = hashlib.sha256()

    def body() -> Iterator[bytes]:
        block = bytes(range(256)) * 4096  # 1 MiB
        for _ in range(32):
            digest.update(block)
            yield block

    with daemon.client(timeout=60) as client:
        response = client.post(f"/proxy/{app.port}/count", content=body())
    assert response.json() == {"size": 32 << 20, "sha256": digest.hexdigest()}


def test_app_crash_mid_response_cuts_the_body(daemon: RunningDaemon, tmp_path: Path) -> None:
    crashing = start_app()
    try:
        with daemon.client() as client:
            with pytest.raises(httpx.HTTPError):
                client.get(f"/proxy/{crashing.port}/crash")
            # The daemon itself is fine afterwards.
            assert client.get("/version").status_code == 200
    finally:
        crashing.stop()


def test_app_cannot_forge_proxy_errors(daemon: RunningDaemon, app: App) -> None:
    with daemon.client() as client:
        response = client.get(f"/proxy/{app.port}/spoof")
    assert response.status_code == 404 and response.text == "app"
    assert "x-proxy-error" not in response.headers


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
def test_ipv6_only_app(daemon: RunningDaemon) -> None:
    v6 = start_app(host="::1")
    try:
        with daemon.client() as client:
            assert client.get(f"/proxy/{v6.port}/info/six").json()["raw_path"] == "/info/six"
    finally:
        v6.stop()


async def _ws_roundtrip(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, protocols=("first", "chosen"), max_msg_size=0) as ws:
            assert ws.protocol == "chosen"  # the app's choice, not the proxy's guess
            await ws.send_str("hello")
            assert (await ws.receive()).data == "hello"
            await ws.send_bytes(b"\x00\x01binary")
            assert (await ws.receive()).data == b"\x00\x01binary"
            big = b"x" * (20 << 20)  # above uvicorn's 16 MiB and websockets' 1 MiB defaults
            await ws.send_bytes(big)
            assert len((await ws.receive(timeout=30)).data) == len(big)
            await ws.send_str("close:4001:app says bye")
            message = await ws.receive()
            assert message.type == aiohttp.WSMsgType.CLOSE
            assert (message.data, message.extra) == (4001, "app says bye")


def test_websocket_bridge(daemon: RunningDaemon, app: App) -> None:
    asyncio.run(_ws_roundtrip(f"{daemon.url.replace('http', 'ws')}/proxy/{app.port}/ws"))


def _refused_upgrade(url: str) -> aiohttp.WSServerHandshakeError:
    """The handshake error of a WebSocket upgrade that must be refused."""

    async def attempt() -> aiohttp.WSServerHandshakeError:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await session.ws_connect(url)
            return info.value

    return asyncio.run(attempt())


def test_websocket_to_closed_port_is_refused(daemon: RunningDaemon) -> None:
    refused = _refused_upgrade(f"{daemon.url.replace('http', 'ws')}/proxy/{free_port()}/ws")
    assert refused.status == 502
    assert refused.headers is not None and refused.headers["x-proxy-error"] == "port-not-open"


def test_forward_over_unix_socket_daemon(tmp_path: Path, app: App) -> None:
    uds_daemon = start_daemon(tmp_path, uds=True)
    try:
        with uds_daemon.client() as client:
            response = client.get(f"/proxy/{app.port}/info/uds?x=1")
        assert json.loads(response.text)["query"] == "x=1"
    finally:
        uds_daemon.stop()


def test_response_hop_by_hop_headers_removed(daemon: RunningDaemon, app: App) -> None:
    with daemon.client() as client:
        response = client.get(f"/proxy/{app.port}/hop")
    assert response.headers["x-kept"] == "yes"
    assert "x-internal" not in response.headers and "keep-alive" not in response.headers


def test_client_close_code_reaches_the_app(daemon: RunningDaemon, app: App) -> None:
    async def run() -> None:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{daemon.url.replace('http', 'ws')}/proxy/{app.port}/ws") as ws:
                await ws.send_str("x")
                await ws.receive()
                await ws.close(code=4005, message=b"client leaves")
            await asyncio.sleep(0.3)
            async with session.get(f"{daemon.url}/proxy/{app.port}/last-close") as response:
                assert await response.json() == {"code": 4005, "reason": "client leaves"}

    asyncio.run(run())


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
def test_websocket_to_ipv6_only_app(daemon: RunningDaemon) -> None:
    v6 = start_app(host="::1")

    async def run() -> None:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{daemon.url.replace('http', 'ws')}/proxy/{v6.port}/ws") as ws:
                await ws.send_str("six")
                assert (await ws.receive()).data == "six"

    try:
        asyncio.run(run())
    finally:
        v6.stop()


class KeepAliveForever:
    """A raw HTTP/1.1 upstream that never closes an idle keep-alive connection itself and
    counts the connections it holds open: only the forwarder can bring the count down."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.open = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with self.lock:
                self.open += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buffer += data
                while b"\r\n\r\n" in buffer:
                    _, buffer = buffer.split(b"\r\n\r\n", 1)
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        except OSError:
            return
        finally:
            conn.close()
            with self.lock:
                self.open -= 1


def test_idle_upstream_connections_are_closed_within_the_bound(tmp_path: Path) -> None:
    upstream = KeepAliveForever()
    daemon = start_daemon(tmp_path, extra_env={"TOOLBOX_FORWARD_KEEPALIVE": "1"})
    try:
        async def burst() -> None:  # concurrent requests: several pooled connections
            async with httpx.AsyncClient(base_url=daemon.url) as client:
                responses = await asyncio.gather(*(client.get(f"/proxy/{upstream.port}/") for _ in range(4)))
                assert all(r.text == "ok" for r in responses)

        asyncio.run(burst())
        assert upstream.open >= 1
        # Nobody calls this upstream again: keepalive 1 s, so the sweep closes them by 1.5 s.
        deadline = time.monotonic() + 5
        while upstream.open and time.monotonic() < deadline:
            time.sleep(0.1)
        assert upstream.open == 0
        # And the pool still works afterwards (a fresh connection).
        assert httpx.get(f"{daemon.url}/proxy/{upstream.port}/").text == "ok"
    finally:
        daemon.stop()
        upstream.server.close()


def test_websocket_upstream_that_never_answers_is_a_504(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path, sandbox_id=None, extra_env={"TOOLBOX_WS_HANDSHAKE_TIMEOUT": "0.5"})
    port = free_port()
    with socket.socket() as silent:  # accepts connections (the kernel does), never answers
        silent.bind(("127.0.0.1", port))
        silent.listen()
        try:
            refused = _refused_upgrade(f"{daemon.url.replace('http', 'ws')}/proxy/{port}/ws")
        finally:
            daemon.stop()
    assert refused.status == 504
    assert refused.headers is not None and refused.headers["x-proxy-error"] == "upstream-timeout"


def _answers_once_per_connection(port: int) -> list[bytes]:
    """An upstream that answers the first request on each connection (kept alive) and hangs
    up on the second without a word: the kept-alive connection the relay reuses is stale.
    Returns the request lines it received."""
    seen: list[bytes] = []
    server = socket.create_server(("127.0.0.1", port))

    def serve(conn: socket.socket) -> None:
        with conn:
            for answer in (True, False):
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    request += chunk
                seen.append(request.split(b"\r\n", 1)[0])
                if answer:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def accept() -> None:
        with server:
            while True:
                conn, _ = server.accept()
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return seen


def test_a_stale_kept_alive_connection_is_retried_once_for_idempotent_requests(daemon: RunningDaemon) -> None:
    port = free_port()
    seen = _answers_once_per_connection(port)
    with daemon.client() as client:
        assert client.get(f"/proxy/{port}/first").text == "ok"
        again = client.get(f"/proxy/{port}/second")  # the reused connection hangs up: a fresh one answers
        assert (again.status_code, again.text) == (200, "ok")
        assert seen.count(b"GET /second HTTP/1.1") == 2
        # A POST may have had its effect: never sent twice, the client hears of it instead.
        posted = client.post(f"/proxy/{port}/third", content=b"side effect")
        assert posted.status_code == 502
        assert seen.count(b"POST /third HTTP/1.1") == 1
