"""PTY benchmark: our daemon side by side with Jupyter terminals and a local PTY, same run.

Reuses the peer-benchmark harness (/work/shared/bench: its `pty_echo` and `pty_stream`
scenarios, its Jupyter service and adapters), adding our daemon as one more column:

  pty_echo    type a 17-char line into `cat` (tty echo off), wait for it: p50/p99 round trip
  pty_stream  `head -c 50M /dev/zero | base64` in the terminal: MiB/s of terminal output

Run it with the harness's Python (it has jupyter_server, websockets, aiohttp), e.g.
  python3 -m venv ~/.cache/pty-bench-venv
  ~/.cache/pty-bench-venv/bin/pip install -r /work/shared/bench/requirements.txt
  ~/.cache/pty-bench-venv/bin/python benchmarks/pty_bench.py [--quick] [--repeats 2]
Our daemon runs under this repo's .venv (`--daemon-python`).
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from statistics import median
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXIT_CONTROL = "X-Daytona-Pty-Exit-Control"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Daemon:
    """`python -m toolbox serve` on a free port, our own child, stopped by its PID."""

    def __init__(self, python: str, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, PYTHONPATH=str(REPO), HOME=str(workdir))
        self.proc = subprocess.Popen(
            [python, "-m", "toolbox", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--workdir", str(workdir)],
            stdout=subprocess.PIPE, env=env, cwd=workdir, start_new_session=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if b"Starting toolbox server" not in line:
            self.stop()
            raise RuntimeError(f"daemon did not start: {line!r}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def ours_adapter(base_url: str):
    """A harness PtyAdapter for our create-connect WebSocket (binary output frames)."""
    import aiohttp
    from adapters import HttpRoute, PtyAdapter, PtySession

    class Session(PtySession):
        def __init__(self, pty_id: str, ws) -> None:
            self.pty_id, self.ws = pty_id, ws
            self.decoder = codecs.getincrementaldecoder("utf-8")("replace")

        async def send(self, data: str) -> None:
            await self.ws.send(data.encode())

        async def recv(self) -> str:
            import websockets

            while True:
                try:
                    frame = await self.ws.recv()
                except websockets.ConnectionClosed:
                    raise EOFError from None
                if isinstance(frame, bytes):
                    text = self.decoder.decode(frame)
                    if text:
                        return text
                elif json.loads(frame).get("status") == "exited":
                    raise EOFError

        async def close(self) -> None:
            try:
                await self.ws.close()
            finally:
                async with aiohttp.ClientSession() as http:
                    async with http.delete(f"{base_url}/process/pty/{self.pty_id}") as response:
                        await response.read()

    class OursPty(PtyAdapter):
        async def open(self) -> PtySession:
            pty_id = f"bench-{uuid.uuid4().hex[:8]}"
            ws = await HttpRoute(base_url).ws_connect(
                f"/process/pty/create-connect?id={pty_id}&cols=80&rows=24", subprotocols=[EXIT_CONTROL]
            )
            first = json.loads(await ws.recv())
            assert first == {"type": "control", "status": "connected"}, first
            return Session(pty_id, ws)

    return OursPty()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", default=os.environ.get("PEER_BENCH_DIR", "/work/shared/bench"),
                        help="the peer-benchmark harness directory")
    parser.add_argument("--daemon-python", default=str(REPO / ".venv" / "bin" / "python"))
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--targets", default="local,jupyter,ours")
    parser.add_argument("--jupyter-port", type=int, default=0)
    args = parser.parse_args()
    sys.path.insert(0, args.peers)
    import scenarios
    from adapters import JupyterPty, LocalPty
    from services import Jupyter, proc_cpu_seconds

    params = scenarios.Params.quick() if args.quick else scenarios.Params()
    tmp = Path(tempfile.mkdtemp(prefix="pty-bench-"))
    ctx = scenarios.Ctx(params=params, tmp=tmp)
    wanted = args.targets.split(",")
    adapters = {}
    daemon = jupyter = None
    try:
        if "local" in wanted:
            adapters["local"] = LocalPty()
        if "jupyter" in wanted:
            (tmp / "logs").mkdir()
            jupyter = Jupyter(tmp, tmp / "logs", port=args.jupyter_port or free_port())
            jupyter.start()
            adapters["jupyter"] = JupyterPty(f"http://127.0.0.1:{jupyter.port}")
        if "ours" in wanted:
            (tmp / "ours").mkdir()
            daemon = Daemon(args.daemon_python, tmp / "ours")
            adapters["ours"] = ours_adapter(daemon.url)

        class Target:
            def __init__(self, name: str, pty) -> None:
                self.name, self.pty = name, pty

        # The server process whose CPU a scenario costs (the local PTY has no server).
        server_pid = {
            "jupyter": jupyter.proc.pid if jupyter and jupyter.proc else None,
            "ours": daemon.proc.pid if daemon else None,
        }

        results: dict[str, dict[str, list[dict]]] = {}
        for round_index in range(args.repeats):
            for scenario in (scenarios.pty_echo, scenarios.pty_stream):
                for name, adapter in adapters.items():  # interleaved, as the harness does
                    started = time.perf_counter()
                    pid = server_pid.get(name)
                    cpu_before = proc_cpu_seconds([pid]) if pid else 0.0
                    try:
                        figures = asyncio.run(scenario(Target(name, adapter), ctx))
                    except Exception as exc:  # noqa: BLE001 - report and go on with the others
                        figures = {"error": f"{type(exc).__name__}: {exc}"}
                    figures["wall_s"] = time.perf_counter() - started
                    if pid and "bytes" in figures:
                        # Server CPU per MiB of terminal output: robust to a busy machine,
                        # unlike MiB/s, which depends on how often each process is scheduled.
                        cpu = proc_cpu_seconds([pid]) - cpu_before
                        figures["server_cpu_ms_per_mib"] = cpu * 1000 / (figures["bytes"] / 2**20)
                    results.setdefault(scenario.__name__, {}).setdefault(name, []).append(figures)
                    print(f"round {round_index + 1} {scenario.__name__:10s} {name:8s} "
                          + " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()),
                          flush=True)
        print()
        print("| scenario | metric | " + " | ".join(adapters) + " |")
        print("|---|---|" + "---|" * len(adapters))
        for scenario_name, metrics in (("pty_echo", ("p50_ms", "p99_ms")),
                                       ("pty_stream", ("mibps", "server_cpu_ms_per_mib"))):
            for metric in metrics:
                cells = []
                for name in adapters:
                    runs = results.get(scenario_name, {}).get(name, [])
                    cells.append(" / ".join(f"{r[metric]:.2f}" if metric in r else "-" for r in runs))
                print(f"| {scenario_name} | {metric} | " + " | ".join(cells) + " |")
        if "ours" in adapters and "local" in adapters:
            ours = [r["mibps"] for r in results["pty_stream"]["ours"] if "mibps" in r]
            local = [r["mibps"] for r in results["pty_stream"]["local"] if "mibps" in r]
            jupyter_runs = [r["mibps"] for r in results["pty_stream"].get("jupyter", []) if "mibps" in r]
            if ours and local:
                print(f"\nours / local PTY read loop throughput: {max(ours) / max(local):.0%} best runs, "
                      f"{median(ours) / median(local):.0%} medians")
            if ours and jupyter_runs:
                print(f"ours / jupyter throughput: {max(ours) / max(jupyter_runs):.2f}x best runs, "
                      f"{median(ours) / median(jupyter_runs):.2f}x medians")
    finally:
        if daemon is not None:
            daemon.stop()
        if jupyter is not None:
            jupyter.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
