"""`code_run('print(1)')` latency, and create → first `code_run`, through the official SDK.

Each figure is measured twice, interleaved so both see the same machine load: with the
warm interpreter (the zygote, toolbox/process/execute/zygote.py) and without it
(`TOOLBOX_CODERUN_ZYGOTE=0`: `python3` started through the shell per run, as before).

Prints:
- (a) p50/p90 of `Process.code_run('print(1)')` against a started daemon
  (`python -m toolbox serve`), through the SDK's own toolbox client, and the CPU time a
  run costs (the figure that does not depend on the machine's load);
- (b) p50/p90 of create → result of the first `code_run('print(1)')`: `POST /sandboxes` on
  the runtime's control socket (warm pool of 1; there is no Daytona control plane on this
  branch, so `daytona.create()` cannot be used), then `code_run` through the SDK's toolbox
  client via the proxy, as the README shows; the create alone is printed too;
- the cgroup memory and RSS of an idle started sandbox, with and without the zygote.

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

from benchmarks.runtime_bench import control, rss_of, wait_pool  # noqa: E402
from tests.helpers import sdk_process, start_daemon  # noqa: E402
from tests.runtime_helpers import Stack, start_stack  # noqa: E402

OFF = {"TOOLBOX_CODERUN_ZYGOTE": "0"}
MODES = {"zygote": {}, "shell (before)": OFF}


def report(name: str, figures: list[float]) -> None:
    figures = sorted(figures)
    p50 = statistics.median(figures)
    p90 = figures[max(0, int(len(figures) * 0.9) - 1)]
    print(f"{name}: p50 {p50:.1f} ms, p90 {p90:.1f} ms, min {figures[0]:.1f} ms, "
          f"max {figures[-1]:.1f} ms (n={len(figures)})", flush=True)


def cpu_seconds(root: int) -> float:
    """CPU time of a process, its reaped children and its live descendants (the zygote and
    what it reaped): the work a run costs, whatever the machine's load."""
    ticks = 0
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stats[int(entry.name)] = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                pass
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, fields in stats.items():
            if int(fields[1]) == parent and pid not in tree:
                tree.add(pid)
                frontier.append(pid)
    for pid in tree:
        if pid in stats:
            ticks += sum(int(v) for v in stats[pid][11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def started_daemons(runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        daemons = {mode: start_daemon(Path(tmp) / str(i), extra_env=env) for i, (mode, env) in enumerate(MODES.items())}
        try:
            processes = {mode: sdk_process(daemon) for mode, daemon in daemons.items()}
            time.sleep(1)  # let start-up work finish (the zygote's, if any)
            for process in processes.values():
                for _ in range(5):  # warm-up: connections, page cache
                    assert process.code_run("print(1)").result == "1\n"
            figures: dict[str, list[float]] = {mode: [] for mode in MODES}
            cpu = {mode: cpu_seconds(daemon.process.pid) for mode, daemon in daemons.items()}
            for _ in range(runs):
                for mode, process in processes.items():
                    started = time.perf_counter()
                    response = process.code_run("print(1)")
                    figures[mode].append((time.perf_counter() - started) * 1000)
                    assert response.exit_code == 0 and response.result == "1\n", response
            for mode, daemon in daemons.items():
                cpu[mode] = (cpu_seconds(daemon.process.pid) - cpu[mode]) / runs * 1000
            for mode, values in figures.items():
                report(f"(a) code_run('print(1)') on a started daemon, {mode}", values)
                print(f"    CPU time per run (daemon, shell or zygote, python): {cpu[mode]:.1f} ms", flush=True)
        finally:
            for daemon in daemons.values():
                daemon.stop()


def sdk_process_via_proxy(api: Any, stack: Stack, sandbox_id: str, http: httpx.Client) -> Any:
    """The SDK's Process over its own toolbox client, pointed at the proxy (README), built
    as the SDK's Sandbox builds it: one shared ApiClient and pooled httpx client."""
    from daytona._sync.process import Process
    from daytona.internal.toolbox_api_client_proxy import ToolboxApiClientProxy
    from daytona_toolbox_api_client import ProcessApi

    client = ToolboxApiClientProxy(api, sandbox_id, f"{stack.url}/toolbox")
    return Process("python", ProcessApi(client), http)


def create_to_first_run(stack: Stack, runs: int) -> None:
    from daytona_toolbox_api_client import ApiClient, Configuration

    api = ApiClient(Configuration(host=stack.url))
    api.default_headers["Authorization"] = f"Bearer {stack.api_key}"
    http = httpx.Client(timeout=60)  # building one costs ~30 ms (TLS context): the SDK shares one
    sdk_process_via_proxy(api, stack, stack.first_id, http).code_run("print(1)")  # open the keep-alive connection
    total: dict[str, list[float]] = {mode: [] for mode in MODES}
    create: dict[str, list[float]] = {mode: [] for mode in MODES}
    with control(stack) as ctl:
        for i in range(runs):
            for n, (mode, env) in enumerate(MODES.items()):
                sandbox_id = f"coderun-{i}-{n}"
                wait_pool(ctl, 1)
                time.sleep(0.5)  # the refill's imports (and zygote) must be done
                started = time.perf_counter()
                created = ctl.post("/sandboxes", json={"id": sandbox_id, "env": env})
                create[mode].append((time.perf_counter() - started) * 1000)
                assert created.status_code == 201, created.text
                response = sdk_process_via_proxy(api, stack, sandbox_id, http).code_run("print(1)")
                total[mode].append((time.perf_counter() - started) * 1000)
                assert response.exit_code == 0 and response.result == "1\n", response
                if i == runs - 1:
                    time.sleep(1)
                    memory(ctl, sandbox_id, mode)
                ctl.delete(f"/sandboxes/{sandbox_id}")
    for mode in MODES:
        report(f"(b) create -> first code_run('print(1)'), warm pool, {mode}", total[mode])
        report(f"    of which create, {mode}", create[mode])


def memory(ctl: httpx.Client, sandbox_id: str, mode: str) -> None:
    sandbox = ctl.get(f"/sandboxes/{sandbox_id}").json()
    pids = [int(p) for p in (Path(sandbox["cgroups"][0]) / "cgroup.procs").read_text().split()]
    print(f"idle started sandbox, {mode}: cgroup memory {sandbox['usage'].get('memory_bytes', 0) / 2**20:.1f} MiB, "
          f"RSS of its {len(pids)} processes {rss_of(pids) / 2**20:.1f} MiB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--creates", type=int, default=15)
    args = parser.parse_args()
    print(f"cpus: {os.cpu_count()}, load at start: {os.getloadavg()[0]:.2f}", flush=True)
    started_daemons(args.runs)
    with tempfile.TemporaryDirectory() as tmp:
        stack = start_stack(Path(tmp) / "stack", pool_size=1)
        try:
            create_to_first_run(stack, args.creates)
        finally:
            stack.stop()
    print(f"load at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
