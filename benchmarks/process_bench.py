"""Process API figures: latency of /process/execute and sync session exec, daemon memory.

    .venv/bin/python benchmarks/process_bench.py [--gib 1] [--runs 200]

Prints: p50/p90 of `POST /process/execute {"command": "true"}` (target p50 <= 5 ms),
p50/p90 of a synchronous session `echo hi` (target <= 10 ms), the daemon's idle RSS, and
its RSS growth while one session command prints --gib GiB (target < 16 MiB).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import start_daemon  # noqa: E402


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def percentiles(samples: list[float]) -> str:
    samples = sorted(samples)
    p50 = statistics.median(samples) * 1000
    p90 = samples[int(len(samples) * 0.9)] * 1000
    return f"p50 {p50:6.2f} ms   p90 {p90:6.2f} ms   (n={len(samples)})"


def timed(call, runs: int) -> list[float]:
    for _ in range(10):  # warm-up: connections, imports, page cache
        call()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--gib", type=float, default=1.0, help="GiB printed by the memory test")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        daemon = start_daemon(Path(tmp))
        try:
            pid = daemon.process.pid
            with daemon.client(timeout=600) as client:
                client.get("/version")
                time.sleep(0.5)
                print(f"idle RSS                     {rss_kib(pid) / 1024:7.1f} MiB")

                def execute() -> None:
                    response = client.post("/process/execute", json={"command": "true"})
                    assert response.status_code == 200 and response.json()["exitCode"] == 0

                print(f"/process/execute true        {percentiles(timed(execute, args.runs))}")

                assert client.post("/process/session", json={"sessionId": "bench"}).status_code == 201

                def session_echo() -> None:
                    response = client.post("/process/session/bench/exec", json={"command": "echo hi"})
                    assert response.json()["stdout"] == "hi\n"

                print(f"session exec `echo hi`       {percentiles(timed(session_echo, args.runs))}")
                # A session that ran many commands keeps no per-command memory tail.
                print(f"RSS after {args.runs + 10} session commands {rss_kib(pid) / 1024:7.1f} MiB")

                size = int(args.gib * 1024**3)
                before = rss_kib(pid)
                peak = before
                started = time.monotonic()
                response = client.post(
                    "/process/session/bench/exec",
                    json={"command": f"head -c {size} /dev/zero | tr '\\0' x", "runAsync": True},
                )
                cmd_id = response.json()["cmdId"]
                while True:
                    peak = max(peak, rss_kib(pid))
                    command = client.get(f"/process/session/bench/command/{cmd_id}").json()
                    if "exitCode" in command:
                        break
                    time.sleep(0.05)
                elapsed = time.monotonic() - started
                peak = max(peak, rss_kib(pid))
                print(
                    f"{args.gib:g} GiB printed in a session  {elapsed:5.1f} s ({args.gib * 1024 / elapsed:5.0f} MiB/s), "
                    f"daemon RSS {before / 1024:.1f} → peak {peak / 1024:.1f} MiB "
                    f"(growth {(peak - before) / 1024:.1f} MiB)"
                )
                end = client.get(
                    f"/process/session/bench/command/{cmd_id}/logs", params={"offset": size}
                ).headers["x-output-offset"]
                print(f"log size on disk (with stream markers): {int(end) / 1024**3:.3f} GiB")

                # The same again, with a WebSocket client following the log as it grows.
                from websockets.sync.client import connect

                before = peak = rss_kib(pid)
                started = time.monotonic()
                cmd_id = client.post(
                    "/process/session/bench/exec",
                    json={"command": f"head -c {size} /dev/zero | tr '\\0' x", "runAsync": True},
                ).json()["cmdId"]
                url = daemon.url.replace("http://", "ws://") + f"/process/session/bench/command/{cmd_id}/logs?follow=true"
                received = 0
                with connect(url, max_size=None) as ws:
                    for count, frame in enumerate(ws):
                        received += len(frame)
                        if count % 256 == 0:
                            peak = max(peak, rss_kib(pid))
                elapsed = time.monotonic() - started
                print(
                    f"{args.gib:g} GiB followed over WebSocket {elapsed:5.1f} s ({received / 1024**2 / elapsed:5.0f} MiB/s), "
                    f"daemon RSS growth {(peak - before) / 1024:.1f} MiB"
                )
                client.delete("/process/session/bench")
        finally:
            daemon.stop()


if __name__ == "__main__":
    main()
