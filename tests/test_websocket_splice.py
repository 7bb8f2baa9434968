"""WebSockets relayed as raw bytes after the handshake (toolbox/forward/splice.py).

The wire behaviour (subprotocols, close codes, 20 MiB messages, refusals) is covered by
test_forward.py and test_proxy.py; these tests cover what splicing adds or must keep:
frame tracking, a clean 1012 on shutdown, end-to-end extensions, early upstream frames,
backpressure in constant memory, and clients that leave during the handshake.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import pytest

from tests.helpers import RunningDaemon
from tests.proxy_helpers import AUTH, App, Proxy, start_proxy
from toolbox.forward.splice import LINGER, FrameCursor, close_frame


def _frame(length: int, *, masked: bool) -> bytes:
    if length < 126:
        head = bytes((0x82, (0x80 if masked else 0) | length))
    elif length < 65536:
        head = bytes((0x82, (0x80 if masked else 0) | 126)) + length.to_bytes(2, "big")
    else:
        head = bytes((0x82, (0x80 if masked else 0) | 127)) + length.to_bytes(8, "big")
    return head + (os.urandom(4) if masked else b"") + b"\xff" * length


@pytest.mark.parametrize("masked", [False, True])
def test_frame_cursor_finds_every_boundary_however_the_stream_is_cut(masked: bool) -> None:
    rng = random.Random(7)
    lengths = [0, 1, 125, 126, 127, 65535, 65536, 70000, 3, 0, 200]
    for _ in range(20):
        frames = [_frame(rng.choice(lengths), masked=masked) for _ in range(12)]
        stream = b"".join(frames)
        ends = set()
        position = 0
        for frame in frames:
            position += len(frame)
            ends.add(position)
        cursor = FrameCursor()
        position = 0
        while position < len(stream):
            step = rng.choice([1, 2, 3, 7, 100, 5000, 70000])
            cursor.feed(stream[position:position + step])
            position = min(position + step, len(stream))
            assert cursor.at_boundary == (position in ends), position


def test_close_frames_are_valid_for_each_direction() -> None:
    plain = close_frame(1012, masked=False)
    assert plain == b"\x88\x02\x03\xf4"
    masked = close_frame(1012, masked=True)
    assert masked[:2] == b"\x88\x82"
    key, payload = masked[2:6], masked[6:]
    assert bytes(b ^ key[i] for i, b in enumerate(payload)) == (1012).to_bytes(2, "big")


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, daemon: RunningDaemon) -> Iterator[Proxy]:
    running = start_proxy(tmp_path_factory.mktemp("splice"), {"pub": {"url": daemon.url, "public": True}})
    yield running
    running.stop()


def _ws_url(proxy: Proxy, path: str) -> str:
    return f"ws://127.0.0.1:{proxy.port}{path}"


def test_extensions_are_negotiated_end_to_end(proxy: Proxy, app: App) -> None:
    # Both hops pass the handshake through, so the browser and the app agree on compression.
    async def run() -> None:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(_ws_url(proxy, "/ws"), compress=15,
                                          headers={"Host": proxy.host(app.port, "pub")}) as ws:
                assert ws.compress == 12  # the app's window (uvicorn), not a proxy's choice
                text = "compress me " * 10_000
                await ws.send_str(text)
                assert (await ws.receive(timeout=10)).data == text

    asyncio.run(run())


def test_frames_sent_right_after_the_handshake_arrive(proxy: Proxy, app: App) -> None:
    async def run() -> None:
        async with aiohttp.ClientSession() as session:
            for _ in range(5):
                async with session.ws_connect(_ws_url(proxy, "/ws-hello"),
                                              headers={"Host": proxy.host(app.port, "pub")}) as ws:
                    assert (await ws.receive(timeout=5)).data == "hello"
                    await ws.send_str("after")
                    assert (await ws.receive(timeout=5)).data == "after"

    asyncio.run(run())


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_peer_that_stops_reading_pushes_back_to_the_sender(proxy: Proxy, daemon: RunningDaemon, app: App) -> None:
    # The app never reads: the client's sends must block, not pile up in the proxy or daemon.
    before = _rss_kib(proxy.process.pid) + _rss_kib(daemon.process.pid)

    grown_mib = 0.0

    async def run() -> tuple[int, aiohttp.WSMsgType]:
        nonlocal grown_mib
        sent = 0
        block = b"z" * (1 << 20)
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(_ws_url(proxy, "/ws-sink?s=6"), max_msg_size=0,
                                          headers={"Host": proxy.host(app.port, "pub")}) as ws:
                while sent < 512:
                    try:
                        await asyncio.wait_for(ws.send_bytes(block), 2)
                    except asyncio.TimeoutError:
                        break
                    sent += 1
                grown_mib = (_rss_kib(proxy.process.pid) + _rss_kib(daemon.process.pid) - before) / 1024
                # The app hangs up with megabytes still queued toward it: that reaches us too.
                return sent, (await ws.receive(timeout=30)).type

    accepted_mib, last = asyncio.run(run())
    assert accepted_mib < 128, f"{accepted_mib} MiB accepted by a peer that reads nothing"
    assert grown_mib < 48, f"proxy + daemon grew {grown_mib:.0f} MiB"
    assert last in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
    _wait_for_no_open_websockets(proxy, within=LINGER * 2)


def test_a_client_that_stops_reading_is_cut_after_the_stall_timeout(tmp_path: Path, daemon: RunningDaemon,
                                                                    app: App) -> None:
    # The app floods, the client reads nothing: the proxy holds back (constant memory), and
    # once nothing has moved for TOOLBOX_WS_STALL_TIMEOUT it cuts the connection.
    proxy = start_proxy(tmp_path, {"pub": {"url": daemon.url, "public": True}},
                        extra_env={"TOOLBOX_WS_STALL_TIMEOUT": "2"})

    async def run() -> aiohttp.WSMsgType:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(_ws_url(proxy, "/ws-flood?mb=256"), max_msg_size=0,
                                          headers={"Host": proxy.host(app.port, "pub")}) as ws:
                await asyncio.sleep(1)
                assert "proxy_websockets_open 1" in (await asyncio.to_thread(
                    httpx.get, f"{proxy.url}/metrics", headers=AUTH)).text
                await asyncio.to_thread(_wait_for_no_open_websockets, proxy, 10)
                while (message := await ws.receive(timeout=10)).type == aiohttp.WSMsgType.BINARY:
                    pass  # what was already on its way
                return message.type

    try:
        assert asyncio.run(run()) in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
    finally:
        proxy.stop()


def _wait_for_no_open_websockets(proxy: Proxy, within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        metrics = httpx.get(f"{proxy.url}/metrics", headers=AUTH).text
        if "proxy_websockets_open 0" in metrics:
            return
        assert time.monotonic() < deadline, [line for line in metrics.splitlines() if "websockets_open" in line]
        time.sleep(0.2)


def test_client_leaving_during_the_handshake_leaves_nothing_open(proxy: Proxy, app: App) -> None:
    async def run() -> None:
        async with aiohttp.ClientSession() as session:
            for _ in range(3):
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(session.ws_connect(_ws_url(proxy, "/ws-slow"),
                                                              headers={"Host": proxy.host(app.port, "pub")}), 0.3)

    asyncio.run(run())
    _wait_for_no_open_websockets(proxy, within=5)  # the app answers 101 to nobody after 1 s
    with httpx.Client(base_url=proxy.url) as client:
        assert client.get("/info/fine", headers={"Host": proxy.host(app.port, "pub")}).status_code == 200


def test_a_quiet_websocket_gets_heartbeats(tmp_path: Path, daemon: RunningDaemon, app: App) -> None:
    # Load balancers cut idle connections; the proxy keeps a quiet one warm with unsolicited
    # pongs (which need no answer), as uvicorn's own pings did before splicing.
    proxy = start_proxy(tmp_path, {"pub": {"url": daemon.url, "public": True}},
                        extra_env={"TOOLBOX_WS_HEARTBEAT": "0.5"})

    async def run() -> None:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(_ws_url(proxy, "/ws"), autoping=False,
                                          headers={"Host": proxy.host(app.port, "pub")}) as ws:
                beats = 0
                deadline = time.monotonic() + 2.2
                while (left := deadline - time.monotonic()) > 0:
                    try:
                        message = await ws.receive(timeout=left)
                    except asyncio.TimeoutError:
                        break
                    assert message.type == aiohttp.WSMsgType.PONG and message.data == b""
                    beats += 1
                assert 2 <= beats <= 5
                await ws.send_str("still here")
                assert (await ws.receive(timeout=5)).data == "still here"

    try:
        asyncio.run(run())
    finally:
        proxy.stop()


def test_shutdown_sends_1012_to_the_client_and_the_app(tmp_path: Path, daemon: RunningDaemon, app: App) -> None:
    proxy = start_proxy(tmp_path, {"pub": {"url": daemon.url, "public": True}}, extra_args=["--drain-seconds", "1"])

    async def run() -> aiohttp.WSMessage:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(_ws_url(proxy, "/ws"), headers={"Host": proxy.host(app.port, "pub")}) as ws:
                await ws.send_str("x")
                await ws.receive()
                proxy.process.send_signal(signal.SIGTERM)
                return await ws.receive(timeout=10)

    try:
        message = asyncio.run(run())
        assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 1012
        assert proxy.process.wait(10) is not None
    finally:
        proxy.stop()
    time.sleep(0.3)
    with daemon.client() as client:
        assert client.get(f"/proxy/{app.port}/last-close").json()["code"] == 1012  # the app saw our masked close
