"""`code_run('print(1)')` latency, and create → first `code_run`, through the official SDK.

Each figure is measured twice, interleaved so both see the same machine load: with the
warm interpreter (the zygote, toolbox/process/execute/zygote.py) and without it
(`TOOLBOX_CODERUN_ZYGOTE=0`: `python3` started through the shell per run, as before).

Prints:
- (a) p50/p90 of `Process.code_run('print(1)')` against a started daemon
  (`python -m toolbox serve`), through the SDK's own toolbox client, and the CPU time a
  run costs (the figure that does not depend on the machine's load);
- (b) p50/p90 of `daytona.create()` → result of the first `sandbox.process.code_run('print(1)')`
  through the official SDK's front door (`Daytona(DaytonaConfig(api_url, api_key))` against
  the main job, warm pool of 1); the `create()` alone is printed too;
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
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.runtime_bench import rss_of  # noqa: E402
from tests.helpers import sdk_process, start_daemon  # noqa: E402
from tests.runtime_helpers import Stack, cgroup_dirs, pool_ready, start_stack  # noqa: E402

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


def wait_pool(stack: Stack) -> None:
    deadline = time.monotonic() + 60
    while pool_ready(stack) < 1:
        if time.monotonic() > deadline:
            raise SystemExit("pool did not fill")
        time.sleep(0.02)
    time.sleep(1.0)  # a pooled directory appears at launch: let its imports (and zygote) finish


def create_to_first_run(stack: Stack, runs: int) -> None:
    """`Daytona().create()` → `sandbox.process.code_run('print(1)')`, the SDK's front door."""
    from daytona import CreateSandboxFromSnapshotParams, Daytona, DaytonaConfig

    daytona = Daytona(DaytonaConfig(api_url=f"http://localhost:{stack.port}/api", api_key=stack.api_key))
    daytona.get(stack.first_id).process.code_run("print(1)")  # open the keep-alive connections
    total: dict[str, list[float]] = {mode: [] for mode in MODES}
    create: dict[str, list[float]] = {mode: [] for mode in MODES}
    for i in range(runs):
        for mode, env in MODES.items():
            wait_pool(stack)
            started = time.perf_counter()
            sandbox = daytona.create(CreateSandboxFromSnapshotParams(env_vars=env))
            create[mode].append((time.perf_counter() - started) * 1000)
            response = sandbox.process.code_run("print(1)")
            total[mode].append((time.perf_counter() - started) * 1000)
            assert response.exit_code == 0 and response.result == "1\n", response
            if i == runs - 1:
                time.sleep(1)
                memory(stack, sandbox.id, mode)
            sandbox.delete()
    for mode in MODES:
        report(f"(b) daytona.create() -> first code_run('print(1)'), warm pool, {mode}", total[mode])
        report(f"    of which create(), {mode}", create[mode])


def memory(stack: Stack, sandbox_id: str, mode: str) -> None:
    groups = cgroup_dirs(stack, sandbox_id)
    pids = [int(p) for p in (groups[0] / "cgroup.procs").read_text().split()]
    usage = next((int((g / n).read_text()) for g in groups for n in ("memory.current", "memory.usage_in_bytes")
                  if (g / n).exists()), 0)
    print(f"idle started sandbox, {mode}: cgroup memory {usage / 2**20:.1f} MiB, "
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
