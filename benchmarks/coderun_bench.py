"""`code_run('print(1)')` latency, and create → first `code_run`, through the official SDK.

Prints:
- (a) p50/p90 of `Process.code_run('print(1)')` against a started daemon
  (`python -m toolbox serve`), through the SDK's own toolbox client;
- (b) p50/p90 of create → result of the first `code_run('print(1)')`: `POST /sandboxes` on
  the runtime's control socket (warm pool of 1; there is no Daytona control plane on this
  branch, so `daytona.create()` cannot be used), then `code_run` through the SDK's toolbox
  client via the proxy, as the README shows;
- the cgroup memory and RSS of an idle started sandbox.

Usage: .venv/bin/python benchmarks/coderun_bench.py [--runs 100] [--creates 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.runtime_bench import control, memory, wait_pool  # noqa: E402
from tests.helpers import sdk_process, start_daemon  # noqa: E402
from tests.runtime_helpers import Stack, start_stack  # noqa: E402


def report(name: str, figures: list[float]) -> None:
    figures = sorted(figures)
    p50 = statistics.median(figures)
    p90 = figures[max(0, int(len(figures) * 0.9) - 1)]
    print(f"{name}: p50 {p50:.1f} ms, p90 {p90:.1f} ms, min {figures[0]:.1f} ms, "
          f"max {figures[-1]:.1f} ms (n={len(figures)})", flush=True)


def started_daemon(runs: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        daemon = start_daemon(Path(tmp))
        try:
            process = sdk_process(daemon)
            time.sleep(1)  # let start-up work finish (a warm interpreter, if any)
            for _ in range(5):  # warm-up: connections, page cache
                assert process.code_run("print(1)").result == "1\n"
            figures = []
            for _ in range(runs):
                started = time.perf_counter()
                response = process.code_run("print(1)")
                figures.append((time.perf_counter() - started) * 1000)
                assert response.exit_code == 0 and response.result == "1\n", response
            return figures
        finally:
            daemon.stop()


def sdk_process_via_proxy(api: Any, stack: Stack, sandbox_id: str) -> Any:
    """The SDK's Process over its own toolbox client, pointed at the proxy (README)."""
    from daytona._sync.process import Process
    from daytona.internal.toolbox_api_client_proxy import ToolboxApiClientProxy
    from daytona_toolbox_api_client import ProcessApi

    client = ToolboxApiClientProxy(api, sandbox_id, f"{stack.url}/toolbox")
    return Process("python", ProcessApi(client), httpx.Client(timeout=60))


def create_to_first_run(stack: Stack, runs: int) -> list[float]:
    from daytona_toolbox_api_client import ApiClient, Configuration

    api = ApiClient(Configuration(host=stack.url))
    api.default_headers["Authorization"] = f"Bearer {stack.api_key}"
    sdk_process_via_proxy(api, stack, stack.first_id).code_run("print(1)")  # open the keep-alive connection
    figures = []
    with control(stack) as ctl:
        for i in range(runs):
            wait_pool(ctl, 1)
            time.sleep(0.5)  # the refill's imports (and warm interpreter) must be done
            started = time.perf_counter()
            created = ctl.post("/sandboxes", json={"id": f"coderun-{i}"})
            assert created.status_code == 201, created.text
            response = sdk_process_via_proxy(api, stack, f"coderun-{i}").code_run("print(1)")
            figures.append((time.perf_counter() - started) * 1000)
            assert response.exit_code == 0 and response.result == "1\n", response
            ctl.delete(f"/sandboxes/coderun-{i}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--creates", type=int, default=15)
    args = parser.parse_args()
    report("(a) code_run('print(1)') on a started daemon", started_daemon(args.runs))
    with tempfile.TemporaryDirectory() as tmp:
        stack = start_stack(Path(tmp) / "stack", pool_size=1)
        try:
            report("(b) create -> first code_run('print(1)'), warm pool (1)",
                   create_to_first_run(stack, args.creates))
            memory(stack)
        finally:
            stack.stop()
    print(f"cpus: {os.cpu_count()}, load: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
