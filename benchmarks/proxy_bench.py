"""Preview path benchmark: our proxy -> daemon /proxy/{port} -> app, side by side with nginx
(one-hop host routing) and jupyter-server-proxy, in one run of the shared peer harness.

    .venv/bin/python benchmarks/proxy_bench.py [--workers 2] [--repeats 1] [--harness DIR]

Starts a daemon and a proxy (`--workers N`, the same count as nginx's workers), registers
sandbox `sbx1` as public in a file registry, then runs the harness (/work/shared/bench, see
its README) with our proxy as one more column (`--http-target`). Scenarios: http_small (wrk,
32 connections), big_download (256 MiB), ws_echo, ws_stream. While it runs, the RSS of the
proxy workers and the daemon is sampled, to show memory stays flat during the download.
Prints the harness's table and the peak RSS; exits non-zero if the harness fails.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"nothing listening on {port}")


def tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, []))
    return out


def rss_mib(pid: int) -> float:
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self.stop_flag = threading.Event()

    def run(self) -> None:
        while not self.stop_flag.wait(0.25):
            self.samples.append((time.monotonic(), rss_mib(self.pid)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="proxy workers; nginx gets the same count")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--harness", default="/work/shared/bench")
    parser.add_argument("--scenarios", default="http_small,big_download,ws_echo,ws_stream")
    parser.add_argument("--targets", default="nginx,jupyter")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--daemon-uds", action="store_true",
                        help="reach the daemon over a Unix socket (the local runtime's setup) instead of TCP")
    parser.add_argument("--one-hop", action="store_true",
                        help="register the sandbox's address (127.0.0.1, where the harness's upstream listens) "
                             "so previews go proxy -> app directly, as with a root runtime's own sandbox "
                             "addresses (issue 16; the veth itself is not in this path)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="proxy-bench-"))
    daemon_port, proxy_port = free_port(), free_port()
    upstream_port, nginx_port, jupyter_port = free_port(), free_port(), free_port()
    registry = tmp / "registry.json"
    sock = tmp / "toolbox.sock"
    address = f"unix:{sock}" if args.daemon_uds else f"http://127.0.0.1:{daemon_port}"
    entry: dict[str, object] = {"url": address, "public": True}
    if args.one_hop:
        entry["address"] = "127.0.0.1"
    registry.write_text(json.dumps({"sandboxes": {"sbx1": entry}}))
    listen = f"--uds {sock}" if args.daemon_uds else f"--host 127.0.0.1 --port {daemon_port}"
    env = dict(os.environ, PYTHONPATH=str(REPO), PROXY_SECRET="bench")
    py = sys.executable
    # One process tree (the proxy exec'd over a shell that started the daemon), so the
    # harness's "proxy CPU" covers both hops: the proxy workers and the daemon.
    command = (f"{py} -m toolbox serve {listen} --workdir {tmp} & "
               f"exec {py} -m proxy serve --host 127.0.0.1 --port {proxy_port} --domain localhost "
               f"--registry file:{registry} --workers {args.workers}")
    ours = subprocess.Popen(["sh", "-c", command], env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while args.daemon_uds and not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if not args.daemon_uds:
            wait_port(daemon_port)
        wait_port(proxy_port)
        time.sleep(1.0)  # all workers up
        sampler = RssSampler(ours.pid)
        rss_before = rss_mib(ours.pid)
        sampler.start()
        out = tmp / "result.json"
        harness = [str(Path(args.harness) / "run_peers.sh"), "--repeats", str(args.repeats),
                   "--targets", args.targets + ",ours", "--scenarios", args.scenarios,
                   "--http-target", f"ours=http://127.0.0.1:{proxy_port},host={{port}}-sbx1.localhost,pid={ours.pid}",
                   "--upstream-port", str(upstream_port), "--nginx-port", str(nginx_port),
                   "--jupyter-port", str(jupyter_port), "--nginx-workers", str(args.workers), "--out", str(out)]
        if args.quick:
            harness.append("--quick")
        bench_env = dict(os.environ)
        bench_env.setdefault("BENCH_HOME", str(Path.home() / ".cache" / "peer-bench"))
        code = subprocess.call(harness, env=bench_env)
        sampler.stop_flag.set()
        sampler.join()
        peak = max((s for _, s in sampler.samples), default=rss_before)
        path = "one hop to the app" if args.one_hop else f"daemon over {'a Unix socket' if args.daemon_uds else 'TCP'}"
        print(f"\nours: proxy workers={args.workers} + {path}; RSS before {rss_before:.0f} MiB, "
              f"peak during the run {peak:.0f} MiB, after {rss_mib(ours.pid):.0f} MiB")
        md = out.with_suffix(".md")
        if md.exists():
            print(md.read_text())
        return code
    finally:
        os.killpg(ours.pid, 15)
        ours.wait(10)


if __name__ == "__main__":
    sys.exit(main())
