"""What a domain allow-list costs (runtime/dns.py): a dnsmasq per listed sandbox.

Prints p50 / max of:
- a cold create (no warm pool) without lists, with a CIDR list and with a domain list;
- a live `set_network` change of the domain list (config rewritten, dnsmasq restarted);
- a lookup from inside a sandbox: through its own dnsmasq (domain-listed) and through the
  gateway's DNAT to the host's resolver (not listed), both answered by the same server.

Root only; traffic only between the host and the namespaces tests/net_helpers.py makes.

Usage: sudo .venv/bin/python benchmarks/network_domains_bench.py [--runs 10]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.net_helpers import INTERNET_A, INTERNET_LOW, internet, python_command
from tests.runtime_direct import DirectRuntime

LOOKUPS = r'''
import socket, sys, time
names, figures = sys.argv[1].split(","), []
for name in names:
    started = time.perf_counter(); socket.gethostbyname(name); figures.append(time.perf_counter() - started)
print(" ".join(f"{f * 1000:.2f}" for f in figures))
'''


def summary(label: str, figures: list[float]) -> None:
    print(f"{label:<52} p50 {statistics.median(figures):7.1f} ms   max {max(figures):7.1f} ms   n={len(figures)}")


def timed_creates(rt: DirectRuntime, runs: int, **kwargs: object) -> list[float]:
    figures = []
    for _ in range(runs):
        started = time.perf_counter()
        sid = rt.run(rt.runtime.create(**kwargs)).id  # type: ignore[arg-type]
        figures.append((time.perf_counter() - started) * 1000)
        rt.run(rt.runtime.delete(sid))
    return figures


def lookups(rt: DirectRuntime, sid: str, runs: int, domain: str) -> list[float]:
    # Distinct names: each is a miss in dnsmasq's cache and the host's, one upstream query.
    names = ",".join(f"n{i}-{random.randrange(10**9)}.{domain}" for i in range(runs))
    code, out = rt.execute(sid, python_command(LOOKUPS, names), timeout=60)
    assert code == 0, out
    return [float(f) for f in out.split()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    inet = internet()
    try:
        with tempfile.TemporaryDirectory(prefix="dombench-") as tmp:
            rt = DirectRuntime(Path(tmp) / "state", network=f"10.213.{random.randrange(128, 250)}.0/24",
                               dns=INTERNET_A)
            try:
                timed_creates(rt, 2)  # warm the page cache
                summary("cold create, no list", timed_creates(rt, args.runs))
                summary("cold create, networkAllowList", timed_creates(rt, args.runs, allow_list=INTERNET_LOW))
                summary("cold create, domainAllowList (starts its dnsmasq)",
                        timed_creates(rt, args.runs, domain_allow_list="example.test"))
                listed = rt.run(rt.runtime.create(domain_allow_list="example.test")).id
                plain = rt.run(rt.runtime.create()).id
                changes = []
                for i in range(args.runs):
                    started = time.perf_counter()
                    rt.run(rt.runtime.set_network(listed, domain_allow_list=f"example.test,d{i}.example.test"))
                    changes.append((time.perf_counter() - started) * 1000)
                summary("live domainAllowList change (dnsmasq restart)", changes)
                rt.run(rt.runtime.set_network(listed, domain_allow_list="example.test"))
                summary("lookup via its dnsmasq (domain-listed)", lookups(rt, listed, args.runs * 3, "example.test"))
                summary("lookup via DNAT to the host's resolver", lookups(rt, plain, args.runs * 3, "example.test"))
            finally:
                rt.close()
    finally:
        inet.close()


if __name__ == "__main__":
    main()
