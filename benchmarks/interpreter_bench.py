"""Interpreter figures: a small and a big print, through a raw WebSocket and the SDK.

    .venv/bin/python benchmarks/interpreter_bench.py [--runs 9]
    OTHER_VENV/bin/python benchmarks/interpreter_bench.py --jupyter-only

Times `print(1)` and `print('x' * 10_000_000)` in the default context, from sending the
request to the close frame (raw: aiohttp; SDK: `CodeInterpreter.run_code`), and the
daemon's CPU time per big print. --jupyter-only times the same two prints through
`jupyter_client` driving an ipykernel instead (a venv with both: `pip install
jupyter_client ipykernel`), for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SMALL = "print(1)"
BIG = "print('x' * 10_000_000)"


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report(label: str, samples: list[float], extra: str = "") -> None:
    ms = sorted(s * 1000 for s in samples)
    print(f"{label:38s} p50 {statistics.median(ms):8.2f} ms   min {ms[0]:8.2f}   max {ms[-1]:8.2f}"
          f"   (n={len(ms)}){extra}", flush=True)


async def raw_run(url: str, code: str) -> tuple[float, int, int]:
    """(seconds, frames, bytes of output text) for one execution over a raw WebSocket."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, max_msg_size=64 * 1024) as ws:
            started = time.perf_counter()
            await ws.send_json({"code": code})
            frames = size = 0
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                frames += 1
                size += len(message.data)
            assert ws.close_code == 1000, ws.close_code
            return time.perf_counter() - started, frames, size


def measure(label: str, run: Callable[[], object], runs: int, pid: int | None = None) -> None:
    run()  # warm-up: the worker, imports, page cache
    samples: list[float] = []
    cpu = 0.0
    extra = ""
    for _ in range(runs):
        before = cpu_seconds(pid) if pid else 0.0
        started = time.perf_counter()
        result = run()
        samples.append(time.perf_counter() - started)
        if pid:
            cpu += cpu_seconds(pid) - before
        if isinstance(result, tuple):
            extra = f"   {result[1]} frames"
    if pid:
        extra += f"   daemon CPU {cpu / runs * 1000:.0f} ms/run"
    report(label, samples, extra)


def jupyter(runs: int) -> None:
    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(kernel_name="python3")
    try:
        def run(code: str) -> None:
            client.execute_interactive(code, output_hook=lambda message: None, timeout=60)

        measure("jupyter_client print(1)", lambda: run(SMALL), runs)
        measure("jupyter_client 10 MB print", lambda: run(BIG), runs)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--jupyter-only", action="store_true")
    args = parser.parse_args()
    if args.jupyter_only:
        jupyter(args.runs)
        return 0
    from tests.helpers import start_daemon

    with tempfile.TemporaryDirectory(prefix="interp-bench-") as tmp:
        daemon = start_daemon(Path(tmp), sandbox_id=None)
        try:
            url = daemon.url.replace("http", "ws", 1) + "/process/interpreter/execute"
            pid = daemon.process.pid
            measure("raw WebSocket print(1)", lambda: asyncio.run(raw_run(url, SMALL)), args.runs, pid)
            measure("raw WebSocket 10 MB print", lambda: asyncio.run(raw_run(url, BIG)), args.runs, pid)

            from daytona._sync.code_interpreter import CodeInterpreter
            from daytona_toolbox_api_client import ApiClient, Configuration, InterpreterApi
            import httpx

            api = InterpreterApi(ApiClient(Configuration(host=daemon.url)))
            with httpx.Client(timeout=60) as http:
                interpreter = CodeInterpreter(api, http)
                measure("SDK run_code print(1)", lambda: interpreter.run_code(SMALL), args.runs, pid)
                measure("SDK run_code 10 MB print", lambda: interpreter.run_code(BIG), args.runs, pid)
        finally:
            daemon.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
