"""The preview proxy end to end: proxy -> daemon /proxy/{port} -> app, and /toolbox/{id}/."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import pytest

from tests.helpers import RunningDaemon, free_port
from tests.proxy_helpers import API_KEY, AUTH, App, Proxy, one_shot_upstream, start_proxy



@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, daemon: RunningDaemon) -> Iterator[Proxy]:
    running = start_proxy(tmp_path_factory.mktemp("proxy"), {
        "sbx-test": {"url": daemon.url, "public": False},
        "pub": {"url": daemon.url, "public": True},
        "gone": {"url": f"http://127.0.0.1:{free_port()}", "public": True},
    })
    yield running
    running.stop()


def test_public_preview_reaches_the_app_byte_for_byte(proxy: Proxy, app: App) -> None:
    with proxy.client() as client:
        response = client.get("/info/a%2Fb%20c/(local)/%40x?q=%41+b&z",
                              headers={"Host": proxy.host(app.port, "pub"), "X-Forwarded-For": "6.6.6.6",
                                       "X-Forwarded-Host": "evil.example", "Forwarded": "for=1.2.3.4",
                                       "X-Forwarded-Proto": "https"})
    assert response.status_code == 200
    seen = response.json()
    assert seen["raw_path"] == "/info/a%2Fb%20c/(local)/%40x"
    assert seen["query"] == "q=%41+b&z"
    headers: dict[str, list[str]] = {}
    for key, value in seen["headers"]:
        headers.setdefault(key, []).append(value)
    assert headers["x-forwarded-for"] == ["127.0.0.1"]  # set, never appended
    assert headers["x-forwarded-host"] == [proxy.host(app.port, "pub")]
    assert headers["x-forwarded-proto"] == ["http"]
    assert headers["x-forwarded-port"] == [str(proxy.port)]
    assert "forwarded" not in headers
    assert headers["host"] == [f"localhost:{app.port}"]


def test_host_is_case_insensitive(proxy: Proxy, app: App) -> None:
    with proxy.client() as client:
        response = client.get("/info/x", headers={"Host": f"{app.port}-PUB.Preview.TEST:{proxy.port}"})
    assert response.status_code == 200


@pytest.mark.parametrize("host,code", [
    ("3000-pub.preview.test.evil.example", "not-found"),  # suffix must be the domain itself
    ("3000-pub.evilpreview.test", "not-found"),
    ("3000-pub.x.preview.test", "invalid-preview-host"),  # one label only
    ("70000-pub.preview.test", "invalid-preview-host"),
    ("0-pub.preview.test", "invalid-preview-host"),
    ("abc-pub.preview.test", "invalid-preview-host"),
    ("3000-pu_b.preview.test", "invalid-preview-host"),
    ("80@evil-pub.preview.test", "invalid-preview-host"),
    ("3000-" + "a" * 60 + ".preview.test", "invalid-preview-host"),
])
def test_hosts_that_are_not_preview_hosts(proxy: Proxy, host: str, code: str) -> None:
    with proxy.client() as client:
        response = client.get("/info/x", headers={"Host": host})
    assert response.status_code == 404
    assert response.headers["x-proxy-error"] == code


def test_unknown_sandbox_json_and_html(proxy: Proxy) -> None:
    with proxy.client() as client:
        api = client.get("/", headers={"Host": proxy.host(3000, "nope")})
        page = client.get("/", headers={"Host": proxy.host(3000, "nope"), "Sec-Fetch-Mode": "navigate",
                                        "Accept": "text/html"})
        fetch = client.get("/", headers={"Host": proxy.host(3000, "nope"), "Sec-Fetch-Mode": "cors",
                                         "Accept": "text/html,*/*"})
    assert api.status_code == page.status_code == fetch.status_code == 404
    assert api.headers["x-proxy-error"] == "sandbox-not-found"
    assert api.json()["code"] == "sandbox-not-found"
    assert page.headers["content-type"].startswith("text/html") and "nope" in page.text
    assert fetch.headers["content-type"] == "application/json"


def test_closed_port_and_unreachable_daemon(proxy: Proxy) -> None:
    closed = free_port()
    with proxy.client() as client:
        api = client.get("/", headers={"Host": proxy.host(closed, "pub")})
        page = client.get("/", headers={"Host": proxy.host(closed, "pub"), "Sec-Fetch-Mode": "navigate"})
        gone = client.get("/", headers={"Host": proxy.host(3000, "gone")})
    assert api.status_code == 502 and api.headers["x-proxy-error"] == "port-not-open"
    assert page.status_code == 502 and page.headers["x-proxy-error"] == "port-not-open"
    assert "<h1>502" in page.text and f"port {closed}" in page.text
    assert gone.status_code == 502 and gone.headers["x-proxy-error"] == "sandbox-unreachable"


def test_sse_and_large_download_stream(proxy: Proxy, app: App) -> None:
    with proxy.client() as client:
        with client.stream("GET", "/sse", headers={"Host": proxy.host(app.port, "pub")}) as response:
            started = time.monotonic()
            chunks = response.iter_raw()
            assert b"data: first" in next(chunks)
            assert time.monotonic() - started < 1.0
            assert b"data: second" in b"".join(chunks)
        with client.stream("GET", "/big?mb=64", headers={"Host": proxy.host(app.port, "pub")}) as response:
            assert response.headers["content-length"] == str(64 << 20)
            assert sum(len(c) for c in response.iter_raw()) == 64 << 20


def test_toolbox_path_with_api_key(proxy: Proxy, app: App) -> None:
    with proxy.client() as client:
        assert client.get("/toolbox/sbx-test/version", headers=AUTH).status_code == 200
        # The rest of the path and the query reach the daemon byte for byte.
        seen = client.get(f"/toolbox/sbx-test/proxy/{app.port}/info/a%2Fb?x=%41+y", headers=AUTH).json()
        assert (seen["raw_path"], seen["query"]) == ("/info/a%2Fb", "x=%41+y")
        headers = dict(seen["headers"])
        assert "authorization" not in headers  # the proxy's credential is not the app's business
        missing = client.get("/toolbox/sbx-test/version")
        wrong = client.get("/toolbox/sbx-test/version", headers={"Authorization": "Bearer nope"})
        unknown = client.get("/toolbox/nope/version", headers=AUTH)
    assert missing.status_code == wrong.status_code == 401
    assert missing.headers["x-proxy-error"] == "toolbox-auth-required"
    assert unknown.status_code == 404 and unknown.headers["x-proxy-error"] == "sandbox-not-found"


@pytest.mark.parametrize("path", [
    "/toolbox/sbx-test/../pub/version", "/toolbox/sbx-test/%2e%2e/pub/version",
    "/toolbox/sbx-test/%2E%2e%2fpub/version", "/toolbox/sbx-test/files/./x", "/toolbox/sbx-test/a/..%5cb",
    "/toolbox/sbx-test/..", "/toolbox/sbx%2ftest/version", "/toolbox/SBX/version", "/toolbox/sbx-test",
])
def test_toolbox_dot_segments_and_bad_ids_rejected(proxy: Proxy, path: str) -> None:
    # Sent on a raw socket: HTTP clients normalise dot segments away before sending.
    response = raw_get(proxy.port, path, {"Authorization": f"Bearer {API_KEY}"})
    assert response.status_code == 400
    assert response.headers["x-proxy-error"] == "invalid-toolbox-path"


def raw_get(port: int, path: str, headers: dict[str, str]) -> httpx.Response:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = [(name, value) for name, _, value in (line.partition(": ") for line in header_lines)]
    return httpx.Response(int(status_line.split()[1]), headers=parsed, content=body)


def test_health_and_metrics(proxy: Proxy, app: App) -> None:
    with proxy.client() as client:
        client.get("/x", headers={"Host": proxy.host(app.port, "pub")})
        client.get("/x", headers={"Host": proxy.host(app.port, "nope")})
        assert client.get("/health").json()["status"] == "ok"
        assert client.get("/health", headers={"Host": "10.0.0.7"}).status_code == 200  # an IP is a bare host
        metrics = client.get("/metrics", headers=AUTH).text
    assert 'proxy_requests_total{kind="preview"}' in metrics
    assert 'proxy_errors_total{code="sandbox-not-found"}' in metrics
    assert "proxy_websockets_open 0" in metrics
    assert "proxy_upstream_latency_seconds_count" in metrics
    assert 'proxy_sandbox_last_activity_seconds{sandbox="pub"}' in metrics


async def _ws_echo(proxy: Proxy, port: int) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"ws://127.0.0.1:{proxy.port}/ws", headers={"Host": proxy.host(port, "pub")},
                                      protocols=("one", "two"), max_msg_size=0) as ws:
            assert ws.protocol == "two"
            await ws.send_str("hi")
            assert (await ws.receive()).data == "hi"
            async with session.get(f"http://127.0.0.1:{proxy.port}/metrics", headers=AUTH) as response:
                assert "proxy_websockets_open 1" in await response.text()
            big = bytes(range(256)) * (20 << 12)  # 20 MiB in one message
            await ws.send_bytes(big)
            assert (await ws.receive(timeout=30)).data == big
            await ws.send_str("close:4003:done here")
            message = await ws.receive()
            assert (message.type, message.data, message.extra) == (aiohttp.WSMsgType.CLOSE, 4003, "done here")


def test_websocket_through_proxy(proxy: Proxy, app: App) -> None:
    asyncio.run(_ws_echo(proxy, app.port))


def test_hop_by_hop_and_credentials_stripped(proxy: Proxy, app: App) -> None:
    with proxy.client() as client:
        response = client.get("/info/x", headers={
            "Host": proxy.host(app.port, "pub"), "Connection": "X-Drop-Me", "X-Drop-Me": "1",
            "Proxy-Authorization": "Basic abc", "X-Daytona-Preview-Token": "whatever",
            "Authorization": f"Bearer {API_KEY}", "X-Toolbox-Preserve-Host": "1"})
    headers = dict(response.json()["headers"])
    for name in ("x-drop-me", "proxy-authorization", "x-daytona-preview-token", "authorization"):
        assert name not in headers
    assert headers["host"] == f"localhost:{app.port}"  # a client cannot ask for Host preservation


def test_app_authorization_passes_through(proxy: Proxy, app: App) -> None:
    with proxy.client() as client:
        response = client.get("/info/x", headers={"Host": proxy.host(app.port, "pub"), "Authorization": "Bearer app-own"})
    assert dict(response.json()["headers"])["authorization"] == "Bearer app-own"


def test_preserve_host_workers_and_graceful_drain(tmp_path: Path, daemon: RunningDaemon, app: App) -> None:
    proxy = start_proxy(tmp_path, {"pub": {"url": daemon.url, "public": True}},
                        extra_args=["--preserve-host", "--workers", "2", "--drain-seconds", "5"])
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with proxy.client() as client:
                    seen = client.get("/info/x", headers={"Host": proxy.host(app.port, "pub")}).json()
                break
            except (httpx.HTTPError, ValueError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert dict(seen["headers"])["host"] == proxy.host(app.port, "pub")
        results: list[httpx.Response] = []

        def slow() -> None:
            with proxy.client() as client:
                results.append(client.get("/slow?s=1.5", headers={"Host": proxy.host(app.port, "pub")}))

        thread = threading.Thread(target=slow)
        thread.start()
        time.sleep(0.5)
        proxy.process.send_signal(signal.SIGTERM)
        thread.join(10)
        assert results and results[0].status_code == 200 and results[0].text == "slow done"
        assert proxy.process.wait(10) is not None
    finally:
        proxy.stop()


def test_uploads_stream_through_both_hops(proxy: Proxy, app: App) -> None:
    block = bytes(range(256)) * 4096  # 1 MiB

    def chunked() -> Iterator[bytes]:
        for _ in range(16):
            yield block

    with proxy.client() as client:
        host = {"Host": proxy.host(app.port, "pub")}
        by_chunks = client.post("/count", content=chunked(), headers=host).json()
        by_length = client.post("/count", content=block * 16, headers=host).json()
    assert by_chunks == by_length
    assert by_chunks["size"] == 16 << 20


def test_head_and_reuse_after_it(proxy: Proxy, app: App) -> None:
    with proxy.client() as client:
        host = {"Host": proxy.host(app.port, "pub")}
        head = client.head("/big?mb=3", headers=host)
        assert head.status_code == 200 and head.headers["content-length"] == str(3 << 20) and head.content == b""
        for _ in range(3):
            assert client.get("/info/again", headers=host).json()["method"] == "GET"


def test_close_delimited_response(proxy: Proxy, daemon: RunningDaemon) -> None:
    # An HTTP/1.0-style app: no Content-Length, the body ends when the connection closes.
    port = free_port()
    one_shot_upstream(port, b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end").wait(5)
    with proxy.client() as client:
        response = client.get("/", headers={"Host": proxy.host(port, "pub")})
    assert (response.status_code, response.text) == (200, "until the end")


def test_client_leaving_mid_stream_leaves_the_proxy_healthy(proxy: Proxy, app: App) -> None:
    with proxy.client() as client:
        host = {"Host": proxy.host(app.port, "pub")}
        for _ in range(3):
            with client.stream("GET", "/big?mb=512", headers=host) as response:
                next(response.iter_raw())  # read a little, then hang up
        with client.stream("GET", "/sse", headers=host) as response:
            next(response.iter_raw())
        assert client.get("/info/still-fine", headers=host).status_code == 200


def test_shutdown_closes_websockets_within_the_drain_time(tmp_path: Path, daemon: RunningDaemon, app: App) -> None:
    proxy = start_proxy(tmp_path, {"pub": {"url": daemon.url, "public": True}}, extra_args=["--drain-seconds", "1"])

    async def run() -> tuple[aiohttp.WSMsgType, float]:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"ws://127.0.0.1:{proxy.port}/ws",
                                          headers={"Host": proxy.host(app.port, "pub")}) as ws:
                await ws.send_str("x")
                await ws.receive()
                started = time.monotonic()
                proxy.process.send_signal(signal.SIGTERM)
                message = await ws.receive(timeout=10)
                return message.type, time.monotonic() - started

    try:
        kind, waited = asyncio.run(run())
        assert kind in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
        assert waited < 5
        assert proxy.process.wait(10) is not None
    finally:
        proxy.stop()


def test_toolbox_path_redirects_stay_under_the_prefix(proxy: Proxy, app: App) -> None:
    with proxy.client() as client:
        base = f"/toolbox/sbx-test/proxy/{app.port}/redirect"
        relative = client.get(base, params={"to": "/next"}, headers=AUTH)
        absolute = client.get(base, params={"to": "https://example.com/x"}, headers=AUTH)
        protocol_relative = client.get(base, params={"to": "//evil.example/x"}, headers=AUTH)
    assert relative.headers["location"] == "/toolbox/sbx-test/next"
    assert absolute.headers["location"] == "https://example.com/x"
    assert protocol_relative.headers["location"] == "//evil.example/x"


def test_websocket_over_the_toolbox_path(proxy: Proxy, app: App) -> None:
    async def run() -> None:
        async with aiohttp.ClientSession() as session:
            url = f"ws://127.0.0.1:{proxy.port}/toolbox/sbx-test/proxy/{app.port}/ws"
            async with session.ws_connect(url, headers=AUTH) as ws:
                await ws.send_bytes(b"via toolbox")
                assert (await ws.receive()).data == b"via toolbox"
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await session.ws_connect(url)
            assert info.value.status == 401

    asyncio.run(run())


def test_daemon_on_a_unix_socket(tmp_path: Path, app: App) -> None:
    from tests.helpers import start_daemon

    uds_daemon = start_daemon(tmp_path / "d", sandbox_id="sbx-uds", uds=True)
    proxy = start_proxy(tmp_path, {"uds": {"url": f"unix:{uds_daemon.uds}", "public": True}})
    try:
        with proxy.client() as client:
            seen = client.get("/info/a%2Fb?q=1", headers={"Host": proxy.host(app.port, "uds")}).json()
            assert (seen["raw_path"], seen["query"]) == ("/info/a%2Fb", "q=1")
            assert client.get("/toolbox/uds/version", headers=AUTH).status_code == 200

        async def ws() -> None:
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(f"ws://127.0.0.1:{proxy.port}/ws",
                                              headers={"Host": proxy.host(app.port, "uds")}) as socket_:
                    await socket_.send_str("over uds")
                    assert (await socket_.receive()).data == "over uds"

        asyncio.run(ws())
    finally:
        proxy.stop()
        uds_daemon.stop()


def test_trusted_load_balancer_client_address(tmp_path: Path, daemon: RunningDaemon, app: App) -> None:
    proxy = start_proxy(tmp_path, {"pub": {"url": daemon.url, "public": True}},
                        extra_args=["--forwarded-allow-ips", "127.0.0.1"])
    try:
        with proxy.client() as client:
            seen = client.get("/info/x", headers={"Host": proxy.host(app.port, "pub"),
                                                  "X-Forwarded-For": "9.9.9.9"}).json()
        values = [v for k, v in seen["headers"] if k == "x-forwarded-for"]
        assert values == ["9.9.9.9"]  # the LB's view of the client, set once
    finally:
        proxy.stop()


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_hanging_up_stops_the_upstream_stream(proxy: Proxy, app: App, method: str) -> None:
    name = f"hangup-{method}"
    with proxy.client() as client:
        host = {"Host": proxy.host(app.port, "pub")}
        body = b"payload" if method == "POST" else None
        with client.stream(method, f"/stream?id={name}", headers=host, content=body) as response:
            assert next(response.iter_raw()).startswith(b"tick")
        deadline = time.monotonic() + 5
        state = ""
        while time.monotonic() < deadline:
            state = client.get("/stream-state", headers=host).json().get(name, "")
            if state == "client gone":
                break
            time.sleep(0.1)
    assert state == "client gone"
