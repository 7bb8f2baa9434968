"""Load through the preview proxy: many WebSockets and HTTP streams to several sandboxes.

    .venv/bin/python -m stress.load [--websockets 1000] [--streams 200] [--seconds 120]
                                    [--sandboxes 3] [--settle 90]

Starts N daemons (one per sandbox, each with a small upstream app on loopback), one proxy
whose file registry names them, then for `--seconds`:
- `--websockets` WebSockets to `{port}-{sandbox}.preview.test` (proxy -> daemon /proxy/{port}
  -> app echo), each sending a numbered text message every `--ws-interval` s and checking
  the echo;
- `--streams` HTTP streams looping: half `GET /big?mb=N` on a preview host (the app streams
  N MiB), half `GET /toolbox/{id}/files/download` of an N MiB file (the daemon streams it),
  each checked for its full length.
Every failure (refused, reset, short body, wrong echo) counts as an error. File descriptors,
RSS and threads of the proxy and every daemon are read from /proc before the load (after a
warm-up), right after it, and after `--settle` s (idle keep-alive connections close: the
daemon drops them after 75 s); then `--rounds` - 1 more rounds of `--second-round` s, each
settled the same way. Nothing leaked means: settled descriptors back to the warm figure
after every round, and the last round's settled RSS no higher than every earlier round's
(the allocator keeps the first round's peak, so the warm figure is not the comparison;
a leak sets a new high in every round).
Loopback only. Exit status 1 if any error or leak is found. Prints a JSON summary last.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.helpers import RunningDaemon, start_daemon  # noqa: E402
from tests.proxy_helpers import API_KEY, App, Proxy, start_app, start_proxy  # noqa: E402

FD_SLACK = 8  # a log file, the registry watcher, ... may open lazily during the run


def raise_fd_limit() -> int:
    """Children inherit it: the proxy holds two sockets per relayed connection."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def sample(pid: int) -> dict[str, int]:
    status = {line.split(":")[0]: line.split(":")[1].strip() for line in open(f"/proc/{pid}/status")}
    return {
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "rss_kib": int(status["VmRSS"].split()[0]),
        "threads": int(status["Threads"]),
    }


@dataclass
class Tally:
    errors: Counter[str] = field(default_factory=Counter)
    ws_open: int = 0
    ws_opened: int = 0
    ws_messages: int = 0
    streams: int = 0
    stream_bytes: int = 0
    first_errors: list[str] = field(default_factory=list)

    def error(self, kind: str, detail: str) -> None:
        self.errors[kind] += 1
        if len(self.first_errors) < 10:
            self.first_errors.append(f"{kind}: {detail}")


async def websocket_client(session: aiohttp.ClientSession, proxy: Proxy, app_port: int, sandbox: str,
                           stop_at: float, interval: float, tally: Tally, index: int) -> None:
    await asyncio.sleep((index % 100) * interval / 100)  # spread the handshakes and the ticks
    try:
        async with session.ws_connect(f"{proxy.url}/ws", headers={"Host": proxy.host(app_port, sandbox)},
                                      heartbeat=None, max_msg_size=1 << 20) as ws:
            tally.ws_open += 1
            tally.ws_opened += 1
            try:
                number = 0
                while time.monotonic() < stop_at:
                    text = f"{index}:{number}"
                    await ws.send_str(text)
                    msg = await asyncio.wait_for(ws.receive(), 30)
                    if msg.type != aiohttp.WSMsgType.TEXT or msg.data != text:
                        tally.error("ws-echo", f"sent {text!r}, got {msg.type} {str(msg.data)[:60]!r}")
                        return
                    tally.ws_messages += 1
                    number += 1
                    await asyncio.sleep(interval)
                await ws.close()
            finally:
                tally.ws_open -= 1
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        tally.error("ws-" + type(exc).__name__, str(exc)[:120])


async def stream_client(session: aiohttp.ClientSession, url: str, headers: dict[str, str], size: int,
                        stop_at: float, tally: Tally) -> None:
    while time.monotonic() < stop_at:
        try:
            async with session.get(url, headers=headers) as response:
                if response.status != 200:
                    tally.error(f"http-{response.status}", (await response.text())[:120])
                    await asyncio.sleep(1)
                    continue
                received = 0
                async for chunk in response.content.iter_chunked(256 * 1024):
                    received += len(chunk)
            if received != size:
                tally.error("http-short-body", f"{url}: {received} of {size} bytes")
            else:
                tally.streams += 1
                tally.stream_bytes += received
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            tally.error("http-" + type(exc).__name__, f"{url}: {str(exc)[:120]}")
            await asyncio.sleep(1)


async def run_load(args: argparse.Namespace, proxy: Proxy, sandboxes: list[tuple[str, RunningDaemon, App]],
                   tally: Tally, seconds: float) -> float:
    stop_at = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)
    size = args.mib << 20
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
        tasks = []
        for index in range(args.websockets):
            name, _, app = sandboxes[index % len(sandboxes)]
            tasks.append(websocket_client(session, proxy, app.port, name, stop_at, args.ws_interval, tally, index))
        for index in range(args.streams):
            name, daemon, app = sandboxes[index % len(sandboxes)]
            if index % 2 == 0:
                url, headers = f"{proxy.url}/big?mb={args.mib}", {"Host": proxy.host(app.port, name)}
            else:
                url = f"{proxy.url}/toolbox/{name}/files/download?path={daemon.workdir / 'blob.bin'}"
                headers = {"Authorization": f"Bearer {API_KEY}"}
            tasks.append(stream_client(session, url, headers, size, stop_at, tally))

        async def report() -> None:
            started = time.monotonic()
            while time.monotonic() < stop_at:
                await asyncio.sleep(10)
                print(f"  t={time.monotonic() - started:5.0f}s ws open {tally.ws_open} msgs {tally.ws_messages} "
                      f"streams {tally.streams} ({tally.stream_bytes >> 20} MiB) errors {sum(tally.errors.values())}",
                      flush=True)

        reporter = asyncio.create_task(report())
        started = time.monotonic()
        await asyncio.gather(*tasks)
        reporter.cancel()
        return time.monotonic() - started


def proxy_gauges(proxy: Proxy) -> dict[str, int]:
    """Bridged WebSockets and live asyncio tasks, from the proxy's /metrics."""
    import httpx

    wanted = {"proxy_websockets_open": "websockets_open", "proxy_asyncio_tasks": "tasks"}
    out = {}
    for line in httpx.get(f"{proxy.url}/metrics", timeout=10).text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            out[wanted[name]] = int(float(value))
    return out


def snapshot(proxy: Proxy, sandboxes: list[tuple[str, RunningDaemon, App]]) -> dict[str, dict[str, int]]:
    out = {"proxy": {**sample(proxy.process.pid), **proxy_gauges(proxy)}}
    for name, daemon, _ in sandboxes:
        out[f"daemon:{name}"] = sample(daemon.process.pid)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--websockets", type=int, default=1000)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--sandboxes", type=int, default=3)
    parser.add_argument("--ws-interval", type=float, default=2.0, help="seconds between a WebSocket's messages")
    parser.add_argument("--mib", type=int, default=2, help="size of each streamed response")
    parser.add_argument("--settle", type=float, default=90,
                        help="seconds for idle keep-alive connections to close (the daemon keeps them 75 s)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of load; the last may not set a new RSS high")
    parser.add_argument("--second-round", type=float, default=30, help="seconds of each round after the first")
    parser.add_argument("--malloc-arenas", type=int, default=0,
                        help="MALLOC_ARENA_MAX for the servers (0: glibc's default, 8 per core; the daemon "
                             "caps itself at TOOLBOX_MALLOC_ARENAS=2 anyway); fewer arenas make RSS follow "
                             "live memory more closely")
    parser.add_argument("--rss-slack-mib", type=float, default=16,
                        help="last round's settled RSS may exceed the highest earlier one by this much")
    args = parser.parse_args()

    limit = raise_fd_limit()
    if args.malloc_arenas:
        os.environ["MALLOC_ARENA_MAX"] = str(args.malloc_arenas)  # the servers inherit it
    print(f"fd limit {limit}; {args.sandboxes} sandboxes, {args.websockets} WebSockets, "
          f"{args.streams} streams of {args.mib} MiB for {args.seconds:g} s", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="stress-load-"))
    sandboxes: list[tuple[str, RunningDaemon, App]] = []
    proxy: Proxy | None = None
    try:
        for index in range(args.sandboxes):
            name = f"load-{index}"
            daemon = start_daemon(tmp / name, sandbox_id=name)
            (daemon.workdir / "blob.bin").write_bytes(os.urandom(args.mib << 20))
            sandboxes.append((name, daemon, start_app()))
        proxy = start_proxy(tmp, {name: {"url": daemon.url, "public": True} for name, daemon, _ in sandboxes})

        warm = Tally()
        asyncio.run(run_load(argparse.Namespace(**{**vars(args), "websockets": 30, "streams": 6}),
                             proxy, sandboxes, warm, 3))
        time.sleep(1)
        before = snapshot(proxy, sandboxes)
        tally = Tally()
        elapsed = asyncio.run(run_load(args, proxy, sandboxes, tally, args.seconds))
        time.sleep(2)
        right_after = snapshot(proxy, sandboxes)
        print(f"load done; settling {args.settle:g} s for keep-alive pools to expire", flush=True)
        time.sleep(args.settle)
        settled = snapshot(proxy, sandboxes)
        # The allocator keeps the first round's peak; a leak grows again with every round.
        rounds = [settled]
        elapsed_again = 0.0
        for number in range(2, args.rounds + 1):
            print(f"round {number}: {args.second_round:g} s, same load", flush=True)
            elapsed_again += asyncio.run(run_load(args, proxy, sandboxes, tally, args.second_round))
            time.sleep(args.settle)
            rounds.append(snapshot(proxy, sandboxes))
            print("  settled: " + json.dumps(rounds[-1]), flush=True)
        settled_again = rounds[-1]
        alive = all(p.poll() is None for p in [proxy.process, *(d.process for _, d, _ in sandboxes)])
    finally:
        for _, daemon, app in sandboxes:
            daemon.stop()
            app.stop()
        if proxy is not None:
            proxy.stop()

    leaks = []
    for key in before:
        for stage in rounds:
            if stage[key]["fds"] > before[key]["fds"] + FD_SLACK:
                leaks.append(f"{key}: fds {before[key]['fds']} -> {stage[key]['fds']}")
            if stage[key].get("tasks", 0) > before[key].get("tasks", 0) + 2:
                leaks.append(f"{key}: asyncio tasks {before[key]['tasks']} -> {stage[key]['tasks']}")
            if stage[key].get("websockets_open", 0):
                leaks.append(f"{key}: {stage[key]['websockets_open']} WebSockets still relayed")
        if len(rounds) > 1:
            # Daemon RSS moves ±20 MiB between rounds, both ways (a malloc arena per worker
            # thread); a leak makes every round a new high, so compare with the best so far.
            high = max(stage[key]["rss_kib"] for stage in rounds[:-1])
            growth = (rounds[-1][key]["rss_kib"] - high) / 1024
            if growth > args.rss_slack_mib:
                leaks.append(f"{key}: RSS {growth:+.0f} MiB above every earlier round")
    summary = {
        "seconds": round(elapsed, 1), "second_round_seconds": round(elapsed_again, 1),
        "websockets": args.websockets, "ws_opened": tally.ws_opened,
        "ws_messages": tally.ws_messages, "streams": args.streams, "streams_completed": tally.streams,
        "stream_mib": tally.stream_bytes >> 20, "errors": dict(tally.errors), "first_errors": tally.first_errors,
        "before": before, "right_after": right_after, "settled": settled, "settled_last": settled_again,
        "rss_mib_per_round": {key: [round(stage[key]["rss_kib"] / 1024, 1) for stage in rounds] for key in before},
        "leaks": leaks, "all_alive": alive,
    }
    for name in ("before", "right_after", "settled", "settled_last"):  # one line per process
        summary[name] = {key: json.dumps(value) for key, value in summary[name].items()}
    print(json.dumps(summary, indent=1))
    ok = not tally.errors and not leaks and alive and tally.ws_opened == args.rounds * args.websockets
    print("PASS" if ok else "FAIL", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
