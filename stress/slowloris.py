"""Slowloris against the proxy and a daemon while honest clients keep using them.

    .venv/bin/python -m stress.slowloris [--connections 2000] [--header-timeout 5] [--seconds 20]

Opens `--connections` sockets (half to the proxy, half to the daemon), each sending a
request line and then one header byte per second, never finishing. Meanwhile an honest
client requests `/version` through the proxy's toolbox path in a loop. Reports: how many
slow connections the servers closed and after how long (should be about the header
deadline, TOOLBOX_HTTP_HEADER_TIMEOUT), the honest requests' latency and errors, and the
servers' descriptors before, during and after. Exit status 1 if a slow connection
outlived twice the deadline, an honest request failed, or descriptors did not come back.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from stress.load import raise_fd_limit, sample  # noqa: E402
from tests.helpers import start_daemon  # noqa: E402
from tests.proxy_helpers import API_KEY, start_proxy  # noqa: E402


async def slow_client(port: int, closed_after: list[float], stop_at: float) -> None:
    started = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        closed_after.append(-1.0)
        return
    try:
        writer.write(b"GET /version HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        while time.monotonic() < stop_at:
            await writer.drain()
            try:
                data = await asyncio.wait_for(reader.read(1024), 1.0)
                if data == b"" or data.startswith(b"HTTP/1.1 408"):
                    closed_after.append(time.monotonic() - started)
                    return
            except asyncio.TimeoutError:
                writer.write(b"a")
    except (ConnectionError, OSError):
        closed_after.append(time.monotonic() - started)
    finally:
        writer.close()


async def honest_client(url: str, stop_at: float, latencies: list[float], errors: list[str]) -> None:
    async with httpx.AsyncClient(timeout=10, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        while time.monotonic() < stop_at:
            started = time.monotonic()
            try:
                response = await client.get(url)
                if response.status_code != 200:
                    errors.append(f"{response.status_code}")
            except httpx.HTTPError as exc:
                errors.append(type(exc).__name__)
            latencies.append(time.monotonic() - started)
            await asyncio.sleep(0.05)


async def attack(args: argparse.Namespace, proxy_port: int, daemon_port: int, pids: dict[str, int]) -> dict:
    stop_at = time.monotonic() + args.seconds
    closed_after: list[float] = []
    latencies: list[float] = []
    errors: list[str] = []
    slow = [slow_client(proxy_port if i % 2 else daemon_port, closed_after, stop_at) for i in range(args.connections)]
    honest = honest_client(f"http://127.0.0.1:{proxy_port}/toolbox/slow-test/version", stop_at, latencies, errors)

    async def peak() -> dict[str, dict[str, int]]:
        await asyncio.sleep(min(2.0, args.header_timeout / 2))
        return {name: sample(pid) for name, pid in pids.items()}

    results = await asyncio.gather(peak(), honest, *slow)
    latencies.sort()
    return {
        "during": results[0],
        "slow_closed": len([t for t in closed_after if t >= 0]),
        "slow_refused": len([t for t in closed_after if t < 0]),
        "slow_closed_after_s": {"min": round(min(closed_after, default=0), 1),
                                "max": round(max(closed_after, default=0), 1)},
        "honest_requests": len(latencies), "honest_errors": errors[:10],
        "honest_p50_ms": round(1000 * latencies[len(latencies) // 2], 1) if latencies else None,
        "honest_p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 1) if latencies else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--header-timeout", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    raise_fd_limit()
    env = {"TOOLBOX_HTTP_HEADER_TIMEOUT": str(args.header_timeout)}
    tmp = Path(tempfile.mkdtemp(prefix="stress-slowloris-"))
    daemon = start_daemon(tmp / "daemon", sandbox_id="slow-test", extra_env=env)
    proxy = start_proxy(tmp, {"slow-test": {"url": daemon.url, "public": True}}, extra_env=env)
    pids = {"proxy": proxy.process.pid, "daemon": daemon.process.pid}
    try:
        before = {name: sample(pid) for name, pid in pids.items()}
        summary = asyncio.run(attack(args, proxy.port, int(daemon.url.rsplit(":", 1)[1]), pids))
        time.sleep(2)
        after = {name: sample(pid) for name, pid in pids.items()}
        alive = proxy.process.poll() is None and daemon.process.poll() is None
    finally:
        proxy.stop()
        daemon.stop()
    summary = {"connections": args.connections, "header_timeout_s": args.header_timeout, **summary,
               "before": before, "after": after, "all_alive": alive}
    leaked = [name for name in pids if after[name]["fds"] > before[name]["fds"] + 4]
    ok = (alive and not summary["honest_errors"] and not leaked
          and summary["slow_closed"] == args.connections
          and summary["slow_closed_after_s"]["max"] <= 2 * args.header_timeout + 2)
    print(json.dumps(summary, indent=1))
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
