"""Figures for the extras: ports, file watching, OpenAPI, screenshots. Prints, asserts nothing.

    .venv/bin/python benchmarks/extras.py

Bounded: a few hundred requests against a daemon on loopback, about 15 s in all.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from httpx_ws import WebSocketSession, connect_ws

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.helpers import start_daemon  # noqa: E402


def timed(call, n: int) -> tuple[float, float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95) - 1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="extras-bench-"))
    display = None
    xvfb = None
    if shutil.which("Xvfb") and shutil.which("xdotool"):
        read, write = os.pipe()
        xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1280x800x24", "-noreset", "-nolisten", "tcp"],
                                pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(write)
        display = ":" + os.fdopen(read).readline().strip()
    daemon = start_daemon(root, extra_env={"DISPLAY": display or ""})
    try:
        with daemon.client(timeout=60) as http:
            median, p95 = timed(lambda: http.get("/port").raise_for_status(), 300)
            print(f"GET /port (reads /proc/net/tcp + tcp6): median {median:.2f} ms, p95 {p95:.2f} ms")
            median, p95 = timed(lambda: http.get("/port/3000/in-use").raise_for_status(), 300)
            print(f"GET /port/3000/in-use: median {median:.2f} ms, p95 {p95:.2f} ms")
            first = time.perf_counter()
            http.get("/openapi.json").raise_for_status()
            cold = (time.perf_counter() - first) * 1000
            median, _ = timed(lambda: http.get("/openapi.json").raise_for_status(), 50)
            print(f"GET /openapi.json: first {cold:.1f} ms (generated), then median {median:.2f} ms (cached)")

            # Event latency: file written -> event frame received over the WebSocket.
            folder = daemon.workdir / "bench"
            folder.mkdir()
            latencies = []
            ws_url = daemon.url.replace("http", "ws", 1) + f"/watch/stream?path={folder}"
            ws: WebSocketSession  # connect_ws's session type variable defaults to it; mypy cannot tell
            with httpx.Client() as ws_http, connect_ws(ws_url, ws_http) as ws:
                json.loads(ws.receive_text())  # ready
                for i in range(30):
                    start = time.perf_counter()
                    (folder / f"f{i}").write_text("x")
                    while True:
                        event = json.loads(ws.receive_text(timeout=10))
                        if event.get("path", "").endswith(f"/f{i}"):
                            break
                    latencies.append((time.perf_counter() - start) * 1000)
                    while True:  # drain the modify that follows the create
                        try:
                            ws.receive_text(timeout=0.3)
                        except Exception:
                            break
            print(f"watch event latency (write -> WebSocket frame): median {statistics.median(latencies):.0f} ms, "
                  f"max {max(latencies):.0f} ms (batches close after 20 ms of quiet, 200 ms at most)")

            # A burst larger than the ring: memory stays flat, the reader is told what it missed.
            before = rss_kib(daemon.process.pid)
            watcher = http.post("/watch", json={"path": str(folder)}).json()
            start = time.perf_counter()
            for i in range(20_000):
                (folder / f"burst{i % 500}").write_text(str(i))
            time.sleep(1.5)
            body = http.get(f"/watch/{watcher['id']}/events", params={"cursor": 0}).json()
            overflow = [e for e in body["events"] if e["type"] == "overflow"]
            after = rss_kib(daemon.process.pid)
            print(f"20000 writes in {time.perf_counter() - start:.1f} s: reader from cursor 0 got {len(body['events'])} events, "
                  f"overflow dropped={overflow[0]['dropped'] if overflow else 0}; daemon RSS {before} -> {after} KiB")

            # The event loop stays free while a big recursive watch is armed.
            big = Path(sys.prefix)
            stalls = []
            stop = threading.Event()

            def probe() -> None:
                with daemon.client(timeout=30) as probe_http:
                    while not stop.is_set():
                        start = time.perf_counter()
                        probe_http.get("/version")
                        stalls.append((time.perf_counter() - start) * 1000)

            thread = threading.Thread(target=probe)
            thread.start()
            start = time.perf_counter()
            created = http.post("/watch", json={"path": str(big), "recursive": True}).json()
            armed = (time.perf_counter() - start) * 1000
            stop.set()
            thread.join()
            entries = sum(len(files) + len(dirs) for _, dirs, files in os.walk(big))
            print(f"recursive watch of {entries} entries armed in {armed:.0f} ms; GET /version meanwhile: "
                  f"max {max(stalls):.1f} ms over {len(stalls)} requests")
            http.delete(f"/watch/{created['id']}")

            if display:
                median, p95 = timed(lambda: http.get("/computeruse/screenshot").raise_for_status(), 10)
                print(f"full screenshot 1280x800 PNG: median {median:.0f} ms, p95 {p95:.0f} ms")
                median, p95 = timed(lambda: http.get("/computeruse/screenshot/compressed",
                                                     params={"format": "jpeg", "quality": 70, "scale": 0.5}).raise_for_status(), 10)
                print(f"compressed screenshot (jpeg q70, scale 0.5): median {median:.0f} ms")
                median, p95 = timed(lambda: http.post("/computeruse/mouse/move", json={"x": 10, "y": 10}).raise_for_status(), 30)
                print(f"mouse move: median {median:.1f} ms")
    finally:
        daemon.stop()
        if xvfb:
            xvfb.kill()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
