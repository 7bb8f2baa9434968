"""Network namespaces the network tests make themselves, and probes run inside sandboxes.

Test network rule: traffic only between the host and namespaces made here. `Internet` is
a namespace standing in for the internet (documentation addresses 198.51.100.0/24, routed
from the host over a veth, so the runtime's NAT sends sandbox egress there) with an HTTP
server that answers with the client's address and a DNS responder; `Lan` is a namespace
on a private range, standing in for the host's other private networks.
"""

from __future__ import annotations

import base64
import contextlib
import os
import random
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Not 203.0.113.0/24: on some machines the package registries resolve there, and this
# net's route would shadow them while a test runs (internet() refuses such a machine).
INTERNET_NET = "198.51.100"
INTERNET_A = f"{INTERNET_NET}.1"  # in INTERNET_LOW
INTERNET_B = f"{INTERNET_NET}.129"  # in INTERNET_HIGH
INTERNET_LOW = f"{INTERNET_NET}.0/25"
INTERNET_HIGH = f"{INTERNET_NET}.128/25"
INTERNET_C = f"{INTERNET_NET}.77"  # answered by the tests' own resolvers, never served
# Addresses no test ever sends to: allow-list entries and spoofed sources only.
UNROUTED_NET = "203.0.113"
INTERNET_HOST = f"{INTERNET_NET}.254"  # the host's end of the link
LAN_NET = "10.199.77"
LAN_ADDRESS = f"{LAN_NET}.1"
DNS_NAME = "pypi.example.test"
DNS_ANSWER = INTERNET_A

# Runs inside a namespace: an HTTP server on :80 naming the client's address (and, at
# /udp, the datagrams a UDP sink on :9 received), and a DNS responder on :53 answering
# every A query with DNS_ANSWER, or with the address argv[2] (JSON) maps its name to.
SERVERS = r'''
import json, socket, struct, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
answer = socket.inet_aton(sys.argv[1])
names = {k: socket.inet_aton(v) for k, v in json.loads(sys.argv[2] if len(sys.argv) > 2 else "{}").items()}
received = []  # UDP datagrams to :9, as "payload source"
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/udp":
            body = "\n".join(received).encode()
        else:
            body = ("from " + self.client_address[0]).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
def dns():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 53))
    while True:
        q, peer = s.recvfrom(512)
        end, labels = 12, []
        while q[end]:
            labels.append(q[end + 1:end + 1 + q[end]].decode().lower()); end += q[end] + 1
        question = q[12:end + 5]
        header = q[:2] + b"\x81\x80" + struct.pack(">HHHH", 1, 1, 0, 0)
        record = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + names.get(".".join(labels), answer)
        s.sendto(header + question + record, peer)
def sink():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 9))
    while True:
        data, peer = s.recvfrom(512)
        received.append(data.decode(errors="replace") + " " + peer[0])
threading.Thread(target=dns, daemon=True).start()
threading.Thread(target=sink, daemon=True).start()
server = ThreadingHTTPServer(("0.0.0.0", 80), H)
print("ready", flush=True)
server.serve_forever()
'''


def dns_reply(query: bytes, answer: str) -> bytes:
    """A DNS response answering a query's question with one A record (as SERVERS does)."""
    import socket
    import struct

    end = 12
    while query[end]:
        end += query[end] + 1
    header = query[:2] + b"\x81\x80" + struct.pack(">HHHH", 1, 1, 0, 0)
    record = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton(answer)
    return header + query[12:end + 5] + record


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {result.stderr}")
    return result


class Namespace:
    """A netns joined to the host by a veth, with `addresses` inside and `host` outside."""

    def __init__(self, kind: str, host: str, addresses: list[str], prefix: int) -> None:
        self.name = f"t{kind}{secrets.token_hex(3)}"
        self.host, self.addresses, self.prefix = host, addresses, prefix
        self.servers: subprocess.Popen[str] | None = None
        try:
            sh("ip", "netns", "add", self.name)
            sh("ip", "link", "add", self.name, "type", "veth", "peer", "name", "eth0", "netns", self.name)
            sh("ip", "addr", "add", f"{host}/{prefix}", "dev", self.name)
            sh("ip", "link", "set", self.name, "up")
            inside = ("ip", "netns", "exec", self.name)
            for address in addresses:
                sh(*inside, "ip", "addr", "add", f"{address}/{prefix}", "dev", "eth0")
            sh(*inside, "ip", "link", "set", "eth0", "up")
            sh(*inside, "ip", "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    def serve(self, names: dict[str, str] | None = None) -> None:
        import json

        self.servers = subprocess.Popen(["ip", "netns", "exec", self.name, sys.executable, "-c", SERVERS,
                                         DNS_ANSWER, json.dumps(names or {})], stdout=subprocess.PIPE, text=True)
        assert self.servers.stdout is not None
        assert self.servers.stdout.readline().strip() == "ready"

    def udp_received(self) -> list[str]:
        """What the UDP sink got, as "payload source" lines (asked from the host)."""
        import httpx

        return httpx.get(f"http://{self.addresses[0]}/udp", timeout=5).text.splitlines()

    def close(self) -> None:
        if self.servers is not None:
            self.servers.kill()
            self.servers.wait()
        sh("ip", "netns", "delete", self.name, check=False)
        sh("ip", "link", "delete", self.name, check=False)


# Hosts this machine must keep reaching while a network test runs (its package registries).
REGISTRIES = ("pypi.org", "files.pythonhosted.org", "registry.npmjs.org", "proxy.golang.org",
              "repo1.maven.org", "deb.debian.org", "index.crates.io")


def _check_unused(net: str) -> None:
    """The fake internet's route shadows the real one for its /24: refuse to start where a
    registry lives there, rather than cut every download on the machine while a test runs."""
    import socket

    for name in REGISTRIES:
        try:
            addresses = {str(info[4][0]) for info in socket.getaddrinfo(name, 443, socket.AF_INET)}
        except OSError:
            continue
        inside = sorted(a for a in addresses if str(a).startswith(f"{net}."))
        if inside:
            raise RuntimeError(f"{name} resolves to {inside[0]}, inside the test internet {net}.0/24: "
                               "pick another INTERNET_NET in tests/net_helpers.py")


def internet(names: dict[str, str] | None = None) -> Namespace:
    """`names`: what its DNS responder answers for those names (others: DNS_ANSWER)."""
    _check_unused(INTERNET_NET)
    ns = Namespace("inet", INTERNET_HOST, [INTERNET_A, INTERNET_B], 24)
    try:
        ns.serve(names)
    except BaseException:
        ns.close()
        raise
    return ns


def lan() -> Namespace:
    ns = Namespace("lan", f"{LAN_NET}.254", [LAN_ADDRESS], 24)
    ns.serve()
    return ns


@contextlib.contextmanager
def internet_and_lan(names: dict[str, str] | None = None) -> Iterator[tuple[Namespace, Namespace]]:
    """The fake internet and the private network beside it, both gone on leaving."""
    inet = internet(names)
    try:
        private = lan()
        try:
            yield inet, private
        finally:
            private.close()
    finally:
        inet.close()


def runtime_range() -> str:
    """A /24 of 10.213.0.0/16 for a runtime of its own range: above the blocks the default
    range's runtimes take first (runtime/netranges.py: lowest free first), and none a
    runtime in the host-wide record holds, which would refuse it."""
    import ipaddress
    import json

    from runtime.netranges import HostNetworks

    try:
        holders = json.loads(HostNetworks().path.read_text())["holders"]
    except (OSError, ValueError, KeyError):
        holders = []
    held = [ipaddress.IPv4Network(n) for h in holders for n in h.get("networks", [])]
    free = [c for c in (f"10.213.{i}.0/24" for i in range(128, 250))
            if not any(ipaddress.IPv4Network(c).overlaps(n) for n in held)]
    return random.choice(free or [f"10.213.{random.randrange(128, 250)}.0/24"])


# Runs inside a sandbox: one line per target `host:port`, "open <reply>" or "closed <why>".
PROBE = r'''
import socket, sys
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        s = socket.create_connection((host, int(port)), timeout=1.5)
        s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        s.settimeout(1.5)
        raw = b""
        while chunk := s.recv(4096):
            raw += chunk
        data = raw.split(b"\r\n\r\n", 1)
        print("open", (data[1] if len(data) > 1 else b"").decode(errors="replace") or "-")
    except OSError as e:
        print("closed", type(e).__name__)
'''


def python_command(script: str, *args: str) -> str:
    encoded = base64.b64encode(script.encode()).decode()
    return f"python3 -c \"import base64;exec(base64.b64decode('{encoded}'))\" {' '.join(args)}"


def probe(runtime: Any, sandbox_id: str, *targets: str) -> list[str]:
    code, out = runtime.execute(sandbox_id, python_command(PROBE, *targets), timeout=20)
    assert code == 0, out
    return out.strip().splitlines()


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def is_root() -> bool:
    return os.geteuid() == 0 and Path("/usr/sbin/nft").exists()
