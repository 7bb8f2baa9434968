"""The control plane through the official Python SDK, against the real main job
(`./scripts/start --no-sandbox`, started here with its state in a temp dir).

Prints:
- `create`: `Daytona.create()` until it returns a started sandbox (warm pool refilled
  between runs; the delete is not timed);
- `create+code_run`: from `create()` to the result of a first `code_run('print(1)')`;
- `concurrent`: N `create()` calls at once, each from its own client (p50/p99; the pool
  size is printed: creates beyond it start a sandbox cold);
- `list`: `GET /api/sandbox` over 1,000 records inserted straight into the store, timed
  on the control plane's own Unix socket (server time, no proxy), and `Daytona.list()`
  through the proxy, which pages through all of them.

Usage: .venv/bin/python benchmarks/controlplane_bench.py [--runs 20] [--pool 4]
       [--concurrent 20] [--records 1000] [--only create,code_run,concurrent,list]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.controlplane_helpers import api_url, database_url, daytona
from tests.runtime_helpers import Stack, start_stack


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def report(name: str, figures: list[float], extra: str = "") -> None:
    print(f"{name:<18} n={len(figures):<3} p50={statistics.median(figures):7.1f} ms  "
          f"p90={pct(figures, 90):7.1f} ms  p99={pct(figures, 99):7.1f} ms  min={min(figures):6.1f} ms"
          f"{('  ' + extra) if extra else ''}", flush=True)


def settle(pause: float) -> None:
    # The pool refills in the background after each take; give it time to be warm again.
    time.sleep(pause)


def bench_create(stack: Stack, runs: int, pause: float) -> None:
    d = daytona(stack)
    d.delete(d.create())  # warm the client's connections and the server's code paths
    figures = []
    for _ in range(runs):
        settle(pause)
        started = time.perf_counter()
        sandbox = d.create()
        figures.append((time.perf_counter() - started) * 1000)
        assert sandbox.state == "started"
        d.delete(sandbox)
    report("create", figures)


def bench_code_run(stack: Stack, runs: int, pause: float) -> None:
    d = daytona(stack)
    figures, first = [], []
    for _ in range(runs):
        settle(pause)
        started = time.perf_counter()
        sandbox = d.create()
        created = time.perf_counter()
        result = sandbox.process.code_run("print(1)")
        done = time.perf_counter()
        assert result.result.strip() == "1", result
        figures.append((done - started) * 1000)
        first.append((done - created) * 1000)
        d.delete(sandbox)
    report("create+code_run", figures)
    report("  first code_run", first)


def bench_concurrent(stack: Stack, count: int, pool: int, fill: float) -> None:
    clients = [daytona(stack) for _ in range(count)]
    settle(fill)  # the pool refills one sandbox at a time after the earlier runs

    def one(client: Any) -> tuple[float, Any]:
        started = time.perf_counter()
        sandbox = client.create()
        return (time.perf_counter() - started) * 1000, sandbox

    started = time.perf_counter()
    with ThreadPoolExecutor(count) as executor:
        results = list(executor.map(one, clients))
    wall = (time.perf_counter() - started) * 1000
    assert all(sandbox.state == "started" for _, sandbox in results)
    report(f"concurrent x{count}", [ms for ms, _ in results], f"all {count} started, wall {wall:.0f} ms, pool {pool}")
    with ThreadPoolExecutor(8) as executor:
        list(executor.map(lambda pair: clients[0].delete(pair[1]), results))


def bench_list(stack: Stack, records: int, runs: int) -> None:
    from controlplane.auth import Keys
    from controlplane.sandboxes.records import SandboxRecord
    from controlplane.store.db import open_engine
    from controlplane.store.schema import sandboxes as table

    engine = open_engine(database_url(stack))
    organization = Keys(engine).authenticate(stack.api_key)
    assert organization is not None
    now = time.time()
    rows = []
    for i in range(records):
        rows.append(SandboxRecord(
            id=f"bench-{i:05d}", organization_id=organization.organization_id, name=f"bench-{i:05d}",
            state="error", desired_state="started", pending=False, os_user="daytona", env={},
            labels={"code-toolbox-language": "python", "bench": "list", "n": str(i % 10)}, public=False,
            target="local", cpu=1, gpu=0, memory=1, disk=3, auto_stop_interval=15, auto_archive_interval=10080,
            auto_delete_interval=-1, network_block_all=True, preview_token=f"t{i}", created_at=now - i,
            updated_at=now, snapshot="default", error_reason="benchmark record: no sandbox behind it",
            last_activity_at=now).values())
    with engine.begin() as conn:
        conn.execute(table.insert(), rows)
    sock = stack.state_dir / "control" / "api.sock"
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://localhost",
                          headers=headers, timeout=30) as direct:
            for query, name in ((
                    {"limit": "100"}, "list page 100"), ({"limit": "200"}, "list page 200"),
                    ({"limit": "100", "labels": '{"n": "3"}'}, "list labels")):
                direct.get("/api/sandbox", params=query)
                figures = []
                for _ in range(runs):
                    started = time.perf_counter()
                    response = direct.get("/api/sandbox", params=query)
                    figures.append((time.perf_counter() - started) * 1000)
                    assert response.status_code == 200, response.text
                report(name, figures, f"server time over {records} records, {len(response.json()['items'])} items")
        d = daytona(stack)
        figures = []
        for _ in range(max(3, runs // 4)):
            started = time.perf_counter()
            count = sum(1 for _ in d.list())
            figures.append((time.perf_counter() - started) * 1000)
        report("Daytona.list()", figures, f"all {count} sandboxes, paged through the proxy")
    finally:
        with engine.begin() as conn:
            conn.execute(table.delete().where(table.c.id.like("bench-%")))
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--egress", action="store_true",
                        help="sandboxes with NAT egress, Daytona's default (tests' main jobs block it)")
    parser.add_argument("--pool", type=int, default=4, help="warm pool size (RUNTIME_POOL_SIZE)")
    parser.add_argument("--concurrent", type=int, default=20)
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between runs, for the pool to refill")
    parser.add_argument("--fill", type=float, default=None,
                        help="seconds to let the pool fill before the concurrent run (default: 1.5 s a sandbox)")
    parser.add_argument("--only", default="create,code_run,concurrent,list")
    args = parser.parse_args()
    only = set(args.only.split(","))
    with tempfile.TemporaryDirectory(prefix="cp-bench-") as state:
        stack = start_stack(Path(state), "--no-sandbox", pool_size=args.pool,
                            extra_env={"RUNTIME_NETWORK_BLOCK_ALL": "0"} if args.egress else None)
        try:
            print(f"main job at {api_url(stack)}, warm pool {args.pool}, store "
                  f"{'PostgreSQL' if os.environ.get('CONTROLPLANE_DATABASE_URL') else 'SQLite'}", flush=True)
            if "create" in only:
                bench_create(stack, args.runs, args.pause)
            if "code_run" in only:
                bench_code_run(stack, args.runs, args.pause)
            if "concurrent" in only:
                bench_concurrent(stack, args.concurrent, args.pool,
                                 args.fill if args.fill is not None else max(3.0, 1.5 * args.pool))
            if "list" in only:
                bench_list(stack, args.records, args.runs)
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
