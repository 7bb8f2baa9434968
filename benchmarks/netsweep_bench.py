"""What a runtime's start pays to sweep the network a runtime that died left (runtime/netranges.py).

For each N: a child process opens a sandbox network on the default range, sets up N slots
(netns, veth, policy; every tenth with a domain list, so a dnsmasq too) and exits without
cleaning up, as a SIGKILL would leave it. Then a new runtime's network opens on another state
dir: its `open` (the host-wide claim, the sweep of the dead one's leftovers, its own table) is
timed, against the same open with nothing to sweep. As root.

Usage: .venv/bin/python benchmarks/netsweep_bench.py [--leaked 0,10,50,100] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import runtime.network as network  # noqa: E402
from runtime.netranges import Holder  # noqa: E402
from runtime.network import DEFAULT_RANGE, Network  # noqa: E402

RESOLVER = "198.51.100.1"  # never asked: dnsmasq only has to start

LEAK = """
import os, sys
sys.path.insert(0, {root!r})
from pathlib import Path
from runtime.network import Network
net = Network(Path({state!r}), {cidr!r}, resolver={resolver!r})
net.open()
taken = set()
for i in range({n}):
    slot = net.allocate(taken)
    taken.add(slot.index)
    net.setup(slot, False, (), ("leak.example",) if i % 10 == 0 else ())
print(net.prefix, flush=True)
os._exit(0)
"""


def _count(prefix: str) -> int:
    out = subprocess.run(["ip", "-json", "netns", "list"], capture_output=True, text=True).stdout.strip()
    return sum(1 for n in json.loads(out or "[]") if n["name"].startswith(prefix))


SWEPT: list[float] = []
_sweep_gone = network.sweep_gone


def _timed_sweep(holders: list[Holder]) -> None:
    started = time.perf_counter()
    _sweep_gone(holders)
    SWEPT.append((time.perf_counter() - started) * 1000)


network.sweep_gone = _timed_sweep  # claim() looks it up at each call


def one(n: int, work: Path, run: int) -> tuple[float, float, int]:
    dead = work / f"dead{n}-{run}"
    code = LEAK.format(root=str(Path(__file__).resolve().parent.parent), state=str(dead), cidr=DEFAULT_RANGE,
                       resolver=RESOLVER, n=n)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    prefix = out.stdout.strip()
    assert _count(prefix) == n
    net = Network(work / f"new{n}-{run}", DEFAULT_RANGE, resolver=RESOLVER)
    SWEPT.clear()
    started = time.perf_counter()
    net.open()
    took = (time.perf_counter() - started) * 1000
    left = _count(prefix)
    net.close()
    return took, sum(SWEPT), left


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--leaked", default="0,10,50,100")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.leaked.split(",")):
            results = [one(n, Path(tmp), run) for run in range(args.runs)]
            opens, sweeps = [r[0] for r in results], [r[1] for r in results]
            print(f"{n:3d} leaked sandboxes (1 in 10 with a dnsmasq): network open p50 "
                  f"{statistics.median(opens):6.1f} ms (max {max(opens):6.1f}), of which the sweep p50 "
                  f"{statistics.median(sweeps):6.1f} ms (max {max(sweeps):6.1f}); "
                  f"left behind: {max(r[2] for r in results)}", flush=True)


if __name__ == "__main__":
    main()
