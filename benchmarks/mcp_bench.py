"""The MCP server against the real main job (`./scripts/start --no-sandbox`, state in a
temp dir), driven by the official `mcp` client library, over stdio and over HTTP.

Prints, per transport:
- `connect`: from nothing to an initialized session (stdio: spawning `python -m mcpserver
  start`; HTTP: the first POST to `/api/mcp`);
- `tools/list`;
- `execute true`, `read_file`, `run_code`: one tool call each, timed at the client;
and, as the floor under them, the same `execute` straight to the toolbox through the proxy
(`direct execute`), so the MCP layer's own cost is the difference.

Usage: .venv/bin/python benchmarks/mcp_bench.py [--runs 30]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.runtime_helpers import Stack, start_stack
from tests.test_mcp import session


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def report(name: str, figures: list[float]) -> None:
    print(f"{name:<24} n={len(figures):<3} p50={statistics.median(figures):7.1f} ms  "
          f"p90={pct(figures, 90):7.1f} ms  min={min(figures):6.1f} ms", flush=True)


async def timed(runs: int, call: Callable[[], Awaitable[object]]) -> list[float]:
    await call()  # warm
    figures = []
    for _ in range(runs):
        started = time.perf_counter()
        await call()
        figures.append((time.perf_counter() - started) * 1000)
    return figures


async def bench_transport(stack: Stack, transport: str, sandbox_id: str, runs: int) -> None:
    connects = []
    for _ in range(max(3, runs // 10)):
        started = time.perf_counter()
        async with session(stack, transport):
            connects.append((time.perf_counter() - started) * 1000)
    report(f"{transport} connect", connects)
    async with session(stack, transport) as client:
        report(f"{transport} tools/list", await timed(runs, client.list_tools))
        sid = {"sandbox_id": sandbox_id}

        async def tool(name: str, **arguments: object) -> None:
            result = await client.call_tool(name, {**sid, **arguments})
            assert not result.is_error, result

        report(f"{transport} execute true", await timed(runs, lambda: tool("execute_command", command="true")))
        report(f"{transport} read_file", await timed(runs, lambda: tool("read_file", path="/etc/passwd")))
        report(f"{transport} run_code", await timed(runs, lambda: tool("run_code", code="x = 1")))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mcp-bench-") as state:
        stack = start_stack(Path(state), "--no-sandbox")
        try:
            created = stack.api("POST", "/sandbox", json={})
            created.raise_for_status()
            sandbox_id = created.json()["id"]
            with stack.toolbox(sandbox_id) as toolbox:
                def direct() -> None:
                    toolbox.post("/process/execute", json={"command": "true"}).raise_for_status()

                direct()
                figures = []
                for _ in range(args.runs):
                    started = time.perf_counter()
                    direct()
                    figures.append((time.perf_counter() - started) * 1000)
                report("direct execute", figures)
            for transport in ("stdio", "http"):
                anyio.run(bench_transport, stack, transport, sandbox_id, args.runs)
            stack.api("DELETE", f"/sandbox/{sandbox_id}")
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
