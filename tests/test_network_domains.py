"""Domain allow-lists (a dnsmasq per listed sandbox filling an nftables set) and linked
sandboxes (a follower reaches its owner by name), performed from inside real sandboxes.

Traffic only between the host and namespaces these tests make (tests/net_helpers.py): the
"internet" namespace's DNS responder answers the names below, so the sandbox's dnsmasq
forwards to it."""

from __future__ import annotations

import json
import random
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.manager import SandboxError
from tests.net_helpers import (
    INTERNET_A, INTERNET_B, INTERNET_HOST, INTERNET_LOW, LAN_ADDRESS, Namespace, internet_and_lan, is_root, probe,
    python_command, runtime_range, sh, wait_for,
)
from tests.controlplane_helpers import extra_key
from tests.runtime_direct import DirectRuntime
from tests.runtime_helpers import Stack, needs_bwrap, start_stack

pytestmark = [needs_bwrap, pytest.mark.skipif(not is_root(), reason="sandbox networking needs root and nftables")]

A, B = f"{INTERNET_A}:80", f"{INTERNET_B}:80"
OPEN = f"open from {INTERNET_HOST}"
CLOSED = "closed TimeoutError"
NAMES = {"allowed.test": INTERNET_A, "cdn.allowed.test": INTERNET_A, "other.test": INTERNET_B,
         "x.wild.test": INTERNET_B, "wild.test": INTERNET_B, "rebind.allowed.test": LAN_ADDRESS}


@pytest.fixture(scope="module")
def inet() -> Iterator[Namespace]:
    with internet_and_lan(NAMES) as (ns, _private):
        yield ns


@pytest.fixture(scope="module")
def rt(inet: Namespace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DirectRuntime]:
    direct = DirectRuntime(tmp_path_factory.mktemp("dom") / "state", network=runtime_range(), dns=INTERNET_A)
    try:
        yield direct
    finally:
        direct.close()


def _create(rt: DirectRuntime, **kwargs: object) -> str:
    return rt.run(rt.runtime.create(**kwargs)).id  # type: ignore[arg-type]


def lookup(rt: DirectRuntime, sid: str, name: str) -> str | None:
    """The address the sandbox's own resolver gives for `name`, or None."""
    script = f"import socket\ntry: print(socket.gethostbyname('{name}'))\nexcept OSError: print('none')"
    code, out = rt.execute(sid, python_command(script), timeout=20)
    assert code == 0, out
    answer = out.strip()
    return None if answer == "none" else answer


def ask_dns(rt: DirectRuntime, sid: str, server: str) -> str:
    """A UDP query for other.test sent straight to `server`:53: "answered" or "blocked"."""
    query = python_command(
        "import socket,sys;s=socket.socket(2,2);s.settimeout(2);"
        "s.sendto(bytes.fromhex('123401000001000000000000056f7468657204746573740000010001'),(sys.argv[1],53))\n"
        "try: s.recv(512); print('answered')\nexcept OSError: print('blocked')", server)
    code, out = rt.execute(sid, query, timeout=20)
    assert code == 0, out
    return out.strip()


def _dnsmasq_pids(conf_dir: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"dnsmasq") and any(str(conf_dir).encode() in a for a in argv):
            pids.append(int(entry.name))
    return pids


def test_a_domain_list_lets_exactly_its_domains_through_and_changes_live(rt: DirectRuntime) -> None:
    sid = _create(rt, domain_allow_list="allowed.test")
    try:
        spec = rt.runtime.get(sid)
        assert spec.domains == ("allowed.test",)
        # Nothing resolved yet: nothing is open, not even the listed domain's address.
        assert probe(rt, sid, A, B) == [CLOSED, CLOSED]
        assert lookup(rt, sid, "allowed.test") == INTERNET_A
        assert probe(rt, sid, A, B) == [OPEN, CLOSED]
        assert lookup(rt, sid, "cdn.allowed.test") == INTERNET_A  # subdomains are included
        # Other names are not even forwarded (NXDOMAIN), and their addresses stay closed.
        assert lookup(rt, sid, "other.test") is None
        assert probe(rt, sid, B) == [CLOSED]
        # Another resolver is no way round it: it is just another address, blocked.
        assert ask_dns(rt, sid, INTERNET_B) == "blocked"
        # Nor is any other host address: to a sandbox without a list those are DNAT-ed to
        # the host's resolver, which would answer any name (a way to tunnel data out).
        gateway = rt.runtime.net.slot_of(spec.address).gateway  # type: ignore[union-attr, arg-type]
        assert ask_dns(rt, sid, INTERNET_HOST) == "blocked"
        assert ask_dns(rt, sid, gateway) == "answered"  # its own dnsmasq (NXDOMAIN for other.test)
        # An allowed name resolving into a private network (DNS rebinding) opens nothing
        # (the host itself reaches that network: the control).
        assert lookup(rt, sid, "rebind.allowed.test") == LAN_ADDRESS
        assert probe(rt, sid, f"{LAN_ADDRESS}:80") == [CLOSED]
        with socket.create_connection((LAN_ADDRESS, 80), timeout=3):
            pass

        # Live: `*.wild.test` allows its subdomains only; allowed.test's address closes.
        rt.run(rt.runtime.set_network(sid, domain_allow_list="*.wild.test"))
        assert probe(rt, sid, A) == [CLOSED]
        assert lookup(rt, sid, "allowed.test") is None
        assert lookup(rt, sid, "wild.test") is None
        assert lookup(rt, sid, "x.wild.test") == INTERNET_B
        assert probe(rt, sid, A, B) == [CLOSED, OPEN]

        # With CIDRs too, either lets a destination through.
        rt.run(rt.runtime.set_network(sid, allow_list=INTERNET_LOW))
        assert probe(rt, sid, A) == [OPEN]
        assert lookup(rt, sid, "x.wild.test") == INTERNET_B
        assert probe(rt, sid, B) == [OPEN]

        # Block-all wins over both; lifting it brings the lists back.
        rt.run(rt.runtime.set_network(sid, block_all=True))
        assert probe(rt, sid, A, B) == [CLOSED, CLOSED]
        assert lookup(rt, sid, "x.wild.test") is None
        rt.run(rt.runtime.set_network(sid, block_all=False, allow_list="", domain_allow_list=""))
        assert probe(rt, sid, A, B) == [OPEN, OPEN]  # no lists: general egress
        assert lookup(rt, sid, "other.test") == INTERNET_B  # the host's resolver again
    finally:
        rt.run(rt.runtime.delete(sid))


def test_the_resolver_is_unprivileged_private_and_stopped_with_its_sandbox(rt: DirectRuntime) -> None:
    assert rt.runtime.net is not None
    conf_dir = rt.runtime.net.resolvers.dir
    sid = _create(rt, domain_allow_list="allowed.test")
    slot = rt.runtime.net.slot_of(rt.runtime.get(sid).address)  # type: ignore[arg-type]
    assert slot is not None
    try:
        pids = _dnsmasq_pids(conf_dir)
        assert len(pids) == 1
        status = Path(f"/proc/{pids[0]}/status").read_text()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert set(uid_line.split()[1:]) == {"65534"}, uid_line
        cap_eff = int(next(line for line in status.splitlines() if line.startswith("CapEff:")).split()[1], 16)
        assert cap_eff == 1 << 12  # CAP_NET_ADMIN alone, for its set
        conf = conf_dir / f"{slot.name}.conf"
        assert stat.S_IMODE(conf.stat().st_mode) == 0o600 and conf.stat().st_uid == 0
        assert stat.S_IMODE(conf_dir.stat().st_mode) == 0o700
        # Listening on the sandbox's gateway only, not on any other host address.
        listening = sh("ss", "-Hlnup", "sport", "= :53").stdout
        mine = [line for line in listening.splitlines() if f"pid={pids[0]}," in line]
        assert mine and all(f"{slot.gateway}:53" in line for line in mine), listening
        # Restarted on a change, stopped when the list goes and with the sandbox.
        rt.run(rt.runtime.set_network(sid, domain_allow_list="allowed.test,other.test"))
        again = _dnsmasq_pids(conf_dir)
        assert len(again) == 1 and again != pids
        rt.run(rt.runtime.set_network(sid, domain_allow_list=""))
        assert _dnsmasq_pids(conf_dir) == []
        rt.run(rt.runtime.set_network(sid, domain_allow_list="allowed.test"))
        assert len(_dnsmasq_pids(conf_dir)) == 1
        rt.run(rt.runtime.stop(sid))
        assert _dnsmasq_pids(conf_dir) == []
        rt.run(rt.runtime.start(sid))  # recorded: it comes back with its list
        assert lookup(rt, sid, "allowed.test") == INTERNET_A and probe(rt, sid, A) == [OPEN]
    finally:
        rt.run(rt.runtime.delete(sid))
    assert _dnsmasq_pids(conf_dir) == []


def test_a_crashed_runtimes_resolvers_are_swept(inet: Namespace, tmp_path: Path) -> None:
    state = tmp_path / "state"
    network = runtime_range()
    code = f"""
import os, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from tests.runtime_direct import DirectRuntime
d = DirectRuntime(__import__("pathlib").Path({str(state)!r}), network={network!r}, dns={INTERNET_A!r})
d.run(d.runtime.create(domain_allow_list="allowed.test"))
print("up", flush=True)
os._exit(0)  # no cleanup: as a SIGKILL would leave it
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "up", out.stderr
    conf_dir = state.resolve() / "dns"
    assert len(_dnsmasq_pids(conf_dir)) == 1
    again = DirectRuntime(state, network=network, dns=INTERNET_A)
    try:
        assert _dnsmasq_pids(conf_dir) == []
        sid = json.loads(next((state / "sandboxes").glob("*/sandbox.json")).read_text())["id"]
        again.run(again.runtime.start(sid))
        assert lookup(again, sid, "allowed.test") == INTERNET_A
    finally:
        again.close()
    assert _dnsmasq_pids(conf_dir) == []


# Config injection into the sandbox's dnsmasq.conf among them ("/", "#", a new line).
@pytest.mark.parametrize("bad", ["exa mple.com", "com", "-bad.example", "a..b", "*.", "x" * 64 + ".com",
                                 "a.test/#/", "a.test\nserver=/#/198.51.100.1", "*.*.a.test",
                                 ",".join(f"d{i}.example" for i in range(101))])
def test_a_bad_domain_list_is_a_400_and_changes_nothing(rt: DirectRuntime, bad: str) -> None:
    with pytest.raises(SandboxError) as info:
        _create(rt, domain_allow_list=bad)
    assert info.value.status == 400 and "domainAllowList" in info.value.message
    sid = _create(rt, domain_allow_list="allowed.test")
    try:
        with pytest.raises(SandboxError) as info:
            rt.run(rt.runtime.set_network(sid, domain_allow_list=bad))
        assert info.value.status == 400
        assert rt.runtime.get(sid).domains == ("allowed.test",)
        assert lookup(rt, sid, "allowed.test") == INTERNET_A
    finally:
        rt.run(rt.runtime.delete(sid))


# Not http.server: it looks its own address up in DNS at start, which block-all stalls.
APP = r'''
import socketserver
class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        self.rfile.readline()
        self.wfile.write(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer(("0.0.0.0", 3000), Handler).serve_forever()
'''
FETCH = r'''
import sys, urllib.request
try:
    print("open", urllib.request.urlopen(sys.argv[1], timeout=2).status)
except Exception as e:
    print("closed", type(e).__name__)
'''


def _fetch(rt: DirectRuntime, sid: str, url: str) -> str:
    code, out = rt.execute(sid, python_command(FETCH, url), timeout=20)
    assert code == 0, out
    return out.strip()


def test_a_linked_follower_reaches_its_owner_by_name_and_no_one_else_does(rt: DirectRuntime) -> None:
    owner = _create(rt)
    follower = third = ""
    try:
        rt.sh(owner, f"nohup {python_command(APP)} >/dev/null 2>&1 &")
        wait_for(lambda: probe(rt, owner, "127.0.0.1:3000")[0].startswith("open"))
        owner_address = rt.runtime.get(owner).address
        follower = _create(rt, link_to=owner, link_names=("the-owner",), block_all=True)
        third = _create(rt)
        assert _fetch(rt, follower, "http://the-owner:3000/") == "open 200"
        assert _fetch(rt, follower, f"http://{owner}:3000/") == "open 200"  # its id works too
        assert probe(rt, follower, A) == [CLOSED]  # the link is no way out: still block-all
        # A third sandbox has no such name and no way to the owner's address.
        assert _fetch(rt, third, "http://the-owner:3000/").startswith("closed")
        assert probe(rt, third, f"{owner_address}:3000") == [CLOSED]
        # The link goes one way: the owner cannot open connections to its follower.
        rt.sh(follower, f"nohup {python_command(APP)} >/dev/null 2>&1 &")
        wait_for(lambda: probe(rt, follower, "127.0.0.1:3000")[0].startswith("open"))
        follower_address = rt.runtime.get(follower).address
        assert probe(rt, owner, f"{follower_address}:3000") == [CLOSED]
        # Root in the third sandbox taking the follower's address gets nowhere either.
        assert rt.runtime.net is not None
        slot = rt.runtime.net.slot_of(rt.runtime.get(third).address)  # type: ignore[arg-type]
        assert slot is not None
        sh("ip", "netns", "exec", slot.name, "ip", "addr", "add", f"{follower_address}/32", "dev", "eth0")
        spoof = python_command(
            "import socket,sys;s=socket.socket();s.settimeout(1.5);s.bind((sys.argv[1],0))\n"
            "try: s.connect((sys.argv[2],3000)); print('open')\nexcept OSError: print('closed')",
            follower_address or "", owner_address or "")
        spoofed = sh("ip", "netns", "exec", slot.name, "sh", "-c", spoof, check=False).stdout.strip()
        assert spoofed == "closed"
        # The link survives the owner's restart (its address is its own for good).
        rt.run(rt.runtime.stop(owner))
        assert _fetch(rt, follower, "http://the-owner:3000/").startswith("closed")
        rt.run(rt.runtime.start(owner))
        rt.sh(owner, f"nohup {python_command(APP)} >/dev/null 2>&1 &")
        wait_for(lambda: _fetch(rt, follower, "http://the-owner:3000/") == "open 200")
    finally:
        for sid in (third, follower, owner):
            if sid:
                rt.run(rt.runtime.delete(sid))


def test_a_link_needs_an_owner_that_exists_and_is_not_itself_linked(rt: DirectRuntime) -> None:
    with pytest.raises(SandboxError) as info:
        _create(rt, link_to="nosuchsandbox")
    assert info.value.status == 404
    owner = _create(rt)
    follower = _create(rt, link_to=owner)
    try:
        with pytest.raises(SandboxError) as info:
            _create(rt, link_to=follower)
        assert info.value.status == 400 and "itself linked" in info.value.message
    finally:
        rt.run(rt.runtime.delete(follower))
        rt.run(rt.runtime.delete(owner))


# -- through the official SDK against the real main job ------------------------------------

@pytest.fixture(scope="module")
def stack(inet: Namespace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"RUNTIME_SANDBOX_NETWORK": runtime_range(), "RUNTIME_SANDBOX_DNS": INTERNET_A, "RUNTIME_NETWORK_BLOCK_ALL": "0"}
    running = start_stack(tmp_path_factory.mktemp("domstack"), "--no-sandbox", pool_size=1, extra_env=env)
    yield running
    running.stop()


def _daytona(stack: Stack, key: str | None = None) -> Any:
    from daytona import Daytona, DaytonaConfig

    return Daytona(DaytonaConfig(api_url=f"http://localhost:{stack.port}/api", api_key=key or stack.api_key))


def _exec(sandbox: Any, script: str, *args: str) -> str:
    result = sandbox.process.exec(python_command(script, *args), timeout=30)
    assert result.exit_code == 0, result.result
    return str(result.result).strip()


SDK_PROBE = r'''
import socket, sys
name, port = sys.argv[1], int(sys.argv[2])
try:
    address = socket.gethostbyname(name)
except OSError:
    print("unresolved"); sys.exit()
try:
    socket.create_connection((address, port), timeout=1.5); print("open", address)
except OSError:
    print("closed", address)
'''


def test_sdk_domain_allow_list_is_stored_returned_and_applied_live(stack: Stack) -> None:
    from daytona import CreateSandboxFromSnapshotParams

    d = _daytona(stack)
    sandbox = d.create(CreateSandboxFromSnapshotParams(domain_allow_list="Allowed.test"))
    try:
        assert sandbox.domain_allow_list == "allowed.test"  # normalized
        assert sandbox.network_block_all is False and sandbox.network_allow_list is None
        assert _exec(sandbox, SDK_PROBE, "allowed.test", "80") == f"open {INTERNET_A}"
        assert _exec(sandbox, SDK_PROBE, "other.test", "80") == "unresolved"
        assert _exec(sandbox, SDK_PROBE, INTERNET_B, "80") == f"closed {INTERNET_B}"
        sandbox.update_network_settings(domain_allow_list="*.wild.test")
        assert sandbox.domain_allow_list == "*.wild.test"
        assert d.get(sandbox.id).domain_allow_list == "*.wild.test"
        assert _exec(sandbox, SDK_PROBE, "x.wild.test", "80") == f"open {INTERNET_B}"
        assert _exec(sandbox, SDK_PROBE, INTERNET_A, "80") == f"closed {INTERNET_A}"
        sandbox.update_network_settings(network_block_all=False)  # clears both lists
        assert (sandbox.domain_allow_list, sandbox.network_allow_list) == (None, None)
        assert _exec(sandbox, SDK_PROBE, INTERNET_A, "80") == f"open {INTERNET_A}"
    finally:
        d.delete(sandbox)


def test_sdk_linked_follower_reaches_its_owner_by_name(stack: Stack) -> None:
    from daytona import CreateSandboxFromSnapshotParams, DaytonaError, DaytonaNotFoundError

    d = _daytona(stack)
    owner = d.create(CreateSandboxFromSnapshotParams(name=f"owner-{random.randrange(10**6)}"))
    third = d.create()
    try:
        owner.fs.upload_file(APP.encode(), "app.py")
        owner.process.exec("nohup python3 app.py >/dev/null 2>&1 &", timeout=10)
        # Daytona's own example: the follower is ephemeral and curls the owner by name.
        follower = d.create(CreateSandboxFromSnapshotParams(linked_sandbox=owner.id, ephemeral=True))
        assert stack.api("GET", f"/sandbox/{follower.id}").json()["linkedSandboxId"] == owner.id
        curl = f"curl -sS --max-time 5 --retry 10 --retry-connrefused --retry-delay 0 http://{owner.name}:3000/"
        result = follower.process.exec(curl, timeout=30)
        assert (result.exit_code, result.result) == (0, "ok"), result.result
        assert third.process.exec(f"curl -sS --max-time 3 http://{owner.name}:3000/", timeout=20).exit_code != 0
        # By name as well as by id (the CLI makes it ephemeral); not ephemeral, or linked to
        # a follower: a 400.
        by_name = d.get(stack.cli("create", "--linked-sandbox", owner.name, "--domain-allow-list", "allowed.test")["id"])
        assert (by_name.auto_delete_interval, by_name.domain_allow_list) == (0, "allowed.test")
        result = by_name.process.exec(curl, timeout=30)
        assert (result.exit_code, result.result) == (0, "ok"), result.result
        with pytest.raises(DaytonaError, match="must be ephemeral") as info:
            d.create(CreateSandboxFromSnapshotParams(linked_sandbox=owner.id))
        assert info.value.status_code == 400
        with pytest.raises(DaytonaError, match="itself linked") as info:
            d.create(CreateSandboxFromSnapshotParams(linked_sandbox=follower.id, ephemeral=True))
        assert info.value.status_code == 400
        # Another organization's sandbox is a 404, as any of its sandboxes is.
        other = _daytona(stack, extra_key(stack, "another-org"))
        with pytest.raises(DaytonaNotFoundError):
            other.create(CreateSandboxFromSnapshotParams(linked_sandbox=owner.id, ephemeral=True))
        # The followers go with their owner.
        d.delete(owner)
        for gone in (follower, by_name):
            with pytest.raises(DaytonaNotFoundError):
                d.get(gone.id)
    finally:
        for sandbox in (third, owner):
            try:
                d.delete(sandbox)
            except DaytonaNotFoundError:
                pass
