"""Sandbox start-up and idle memory, through the real main job (`python -m runtime up`).

Prints:
- create-to-first-call: `POST /api/sandbox` (Daytona's REST API, through the proxy) until
  the new sandbox answers `GET /toolbox/{id}/version` through the proxy (warm pool, then
  an empty pool);
- idle memory of a started sandbox and of a pooled one (cgroup usage and daemon RSS);
- with `--rootfs snapshot` (sandboxes with their own root, the default snapshot from the
  shared test layers dir, built there once): the host disk each idle sandbox takes (its
  disk image's allocated blocks: only its upper layer).

Usage: .venv/bin/python benchmarks/runtime_bench.py [--runs 15] [--rootfs host|snapshot]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.runtime_helpers import Stack, cgroup_dirs, pool_ready, start_stack


def wait_pool(stack: Stack, size: int) -> None:
    deadline = time.monotonic() + 60
    while pool_ready(stack) < size:
        if time.monotonic() > deadline:
            raise SystemExit("pool did not fill")
        time.sleep(0.02)
    time.sleep(1.0)  # a pooled directory appears at launch; give its imports time to finish


def measure(stack: Stack, runs: int, pool: int) -> list[float]:
    figures = []
    with httpx.Client(base_url=stack.url, timeout=60, headers={"Authorization": f"Bearer {stack.api_key}",
                                                                "Host": f"localhost:{stack.port}"}) as proxy:
        proxy.get("/health")  # open the keep-alive connection
        for i in range(runs):
            if pool:
                wait_pool(stack, pool)
            time.sleep(0.3)  # let the proxy's registry check lapse
            started = time.perf_counter()
            created = proxy.post("/api/sandbox", json={"name": f"bench-{pool}-{i}"})
            assert created.status_code == 200, created.text
            response = proxy.get(f"/toolbox/{created.json()['id']}/version")
            # create returns once the proxy routes the new id: the first call must succeed.
            assert response.status_code == 200, response.text
            figures.append((time.perf_counter() - started) * 1000)
    return figures


def rss_of(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def memory(stack: Stack) -> None:
    listed = stack.api("GET", "/sandbox").json()["items"]
    sandbox = next(s for s in listed if s["state"] == "started")
    time.sleep(1)
    groups = cgroup_dirs(stack, sandbox["id"])
    pids = [int(p) for p in (groups[0] / "cgroup.procs").read_text().split()]
    usage = next((int((g / n).read_text()) for g in groups for n in ("memory.current", "memory.usage_in_bytes")
                  if (g / n).exists()), 0)
    print(f"idle started sandbox: cgroup memory {usage / 2**20:.1f} MiB, "
          f"RSS of its {len(pids)} processes {rss_of(pids) / 2**20:.1f} MiB")
    pooled = [d for d in (stack.state_dir / "pool").iterdir()]
    print(f"pooled sandboxes waiting: {len(pooled)}")
    images = sorted((stack.state_dir / "sandboxes").glob("*/disk.img"))
    if images:
        used = [i.stat().st_blocks * 512 for i in images]
        print(f"host disk per idle sandbox (its disk image, sparse): median {statistics.median(used) / 2**20:.1f} MiB, "
              f"max {max(used) / 2**20:.1f} MiB over {len(used)}; image size {images[0].stat().st_size / 2**30:.0f} GiB")


def report(name: str, figures: list[float]) -> None:
    figures.sort()
    p50 = statistics.median(figures)
    p90 = figures[int(len(figures) * 0.9) - 1] if len(figures) >= 10 else figures[-1]
    print(f"{name}: p50 {p50:.1f} ms, p90 {p90:.1f} ms, min {figures[0]:.1f} ms, max {figures[-1]:.1f} ms (n={len(figures)})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--rootfs", choices=("host", "snapshot"), default="host")
    args = parser.parse_args()
    env = {"RUNTIME_ROOTFS": args.rootfs}
    if args.rootfs == "snapshot":
        from tests.layer_helpers import shared_default

        env["RUNTIME_LAYERS_DIR"] = str(shared_default()[0].layers_dir)  # built once, shared
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        warm = start_stack(Path(tmp) / "warm", pool_size=1, extra_env=env)
        try:
            report("create-to-first-call, warm pool (1)", measure(warm, args.runs, pool=1))
            memory(warm)
        finally:
            warm.stop()
        cold = start_stack(Path(tmp) / "cold", pool_size=0, extra_env=env)
        try:
            report("create-to-first-call, cold (empty pool)", measure(cold, max(5, args.runs // 2), pool=0))
        finally:
            cold.stop()
    print(f"cpus: {os.cpu_count()}, load: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
