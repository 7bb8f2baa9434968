"""Sandbox networks reserved host-wide (runtime/netranges.py): several runtimes on one host,
the default range shared in blocks, an explicit range refused over a live runtime's, and what
runtimes that died without cleaning up left swept by the next one to start, never a live one's.

Traffic only between the host and namespaces these tests make (tests/net_helpers.py). The
record is the host's own (`/var/lib/sandbox-toolbox/network-ranges.json`): these runtimes
must see each other, and every other runtime on the machine, as they would in use."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from runtime.manager import Runtime, SandboxError
from runtime.netranges import HostNetworks
from runtime.network import DEFAULT_RANGE
from tests.net_helpers import INTERNET_A, INTERNET_HOST, Namespace, internet, is_root, probe, sh, wait_for
from tests.runtime_direct import DirectRuntime
from tests.runtime_helpers import Stack, needs_bwrap, start_stack

pytestmark = [needs_bwrap, pytest.mark.skipif(not is_root(), reason="sandbox networking needs root and nftables")]

A = f"{INTERNET_A}:80"
LISTED = "allowed.test:80"  # the test internet's resolver answers INTERNET_A
OPEN = [f"open from {INTERNET_HOST}"]


@pytest.fixture(scope="module")
def inet() -> Iterator[Namespace]:
    ns = internet()
    try:
        yield ns
    finally:
        ns.close()


def _holder(state: Path) -> dict[str, Any] | None:
    holders = json.loads(HostNetworks().path.read_text())["holders"]
    return next((h for h in holders if h["state"] == str(state.resolve())), None)


def _netns(prefix: str) -> list[str]:
    out = sh("ip", "-json", "netns", "list").stdout.strip()
    return [n["name"] for n in json.loads(out or "[]") if n["name"].startswith(prefix)]


def _links(prefix: str) -> list[str]:
    return [link["ifname"] for link in json.loads(sh("ip", "-json", "link", "show").stdout)
            if link["ifname"].startswith(prefix)]


def _has_table(table: str) -> bool:
    return sh("nft", "list", "table", "inet", table, check=False).returncode == 0


def _dnsmasq(state: Path) -> list[int]:
    flag = f"--conf-file={state.resolve()}/dns/".encode()
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.startswith(flag) for a in argv):
            found.append(int(cmdline.parent.name))
    return found


def _masqueraded(table: str) -> list[str]:
    """The table's `own` set: the sources its NAT rule takes (only its runtime's blocks)."""
    listed = json.loads(sh("nft", "-j", "list", "set", "inet", table, "own").stdout)["nftables"][1]["set"]
    return [f"{e['prefix']['addr']}/{e['prefix']['len']}" for e in listed.get("elem", [])]


def _direct(state: Path, network: str = DEFAULT_RANGE) -> DirectRuntime:
    return DirectRuntime(state, network=network, dns=INTERNET_A)


def _create(rt: DirectRuntime, **kwargs: Any) -> str:
    return rt.run(rt.runtime.create(**kwargs)).id


def test_two_runtimes_on_the_default_range_get_disjoint_blocks_and_both_reach_the_internet(
        inet: Namespace, tmp_path: Path) -> None:
    first = _direct(tmp_path / "a")
    try:
        second = _direct(tmp_path / "b")
        try:
            na, nb = first.runtime.net, second.runtime.net
            assert na is not None and nb is not None and na.blocks and nb.blocks
            assert not any(x.overlaps(y) for x in na.blocks for y in nb.blocks)
            assert na.prefix != nb.prefix and na.table != nb.table
            # Each masquerades its own blocks only (the other's linked sandboxes stay unNATed).
            assert (_masqueraded(na.table), _masqueraded(nb.table)) == ([str(b) for b in na.blocks],
                                                                        [str(b) for b in nb.blocks])
            for rt in (first, second):
                holder = _holder(rt.runtime.root)
                assert holder is not None and holder["pid"] == os.getpid()
                assert holder["networks"] == [str(b) for b in rt.runtime.net.blocks]  # type: ignore[union-attr]
            ids = [_create(first), _create(second)]
            addresses = [first.runtime.get(ids[0]).address, second.runtime.get(ids[1]).address]
            assert na.slot_of(addresses[0]) is not None and nb.slot_of(addresses[1]) is not None  # type: ignore[arg-type]
            assert nb.slot_of(addresses[0]) is None and na.slot_of(addresses[1]) is None  # type: ignore[arg-type]
            with ThreadPoolExecutor(2) as pool:  # at the same time, each through its own table's NAT
                reached = list(pool.map(lambda pair: probe(pair[0], pair[1], A, A, A),
                                        [(first, ids[0]), (second, ids[1])]))
            assert reached == [OPEN * 3, OPEN * 3]
        finally:
            second.close()
    finally:
        first.close()
    assert _holder(tmp_path / "a")["pid"] is None  # type: ignore[index]  # stopped: kept, not running


def _refused(state: Path, network: str) -> SandboxError:
    runtime = Runtime(state, pool_size=0, idle_timeout=0, network=network, dns=INTERNET_A)
    with pytest.raises(SandboxError) as info:
        asyncio.run(runtime.open())
    return info.value


def test_an_explicit_range_over_a_live_runtimes_is_refused_and_a_stopped_ones_is_taken(
        inet: Namespace, tmp_path: Path) -> None:
    shared = _direct(tmp_path / "shared")
    assert shared.runtime.net is not None
    block = shared.runtime.net.blocks[0]
    sid = _create(shared)
    old_address = shared.runtime.get(sid).address
    try:
        for cidr in (str(block), str(block.supernet(1)), str(next(block.subnets(new_prefix=30)))):
            error = _refused(tmp_path / "explicit", cidr)
            assert error.status == 409
            assert str(shared.runtime.root) in error.message and "RUNTIME_SANDBOX_NETWORK" in error.message
            assert _holder(tmp_path / "explicit") is None  # nothing recorded for the refused one
        assert probe(shared, sid, A) == OPEN  # and nothing of the live one touched
    finally:
        shared.close()
    # Stopped, its block is still its own, but an explicit range may take it ...
    explicit = _direct(tmp_path / "explicit", str(block))
    try:
        assert _holder(tmp_path / "shared")["networks"] == []  # type: ignore[index]
        # ... and the stopped runtime, started again, gets another; its sandbox a new address.
        again = _direct(tmp_path / "shared")
        try:
            assert again.runtime.net is not None and not again.runtime.net.blocks[0].overlaps(block)
            again.run(again.runtime.start(sid))
            assert again.runtime.get(sid).address != old_address
            assert again.runtime.net.slot_of(again.runtime.get(sid).address) is not None  # type: ignore[arg-type]
            assert probe(again, sid, A) == OPEN
        finally:
            again.close()
        other = _create(explicit)
        assert ipaddress.IPv4Address(explicit.runtime.get(other).address) in block
    finally:
        explicit.close()


def test_the_main_job_refuses_an_explicit_range_over_a_live_runtimes_in_one_line(
        inet: Namespace, tmp_path: Path) -> None:
    from tests.helpers import REPO_ROOT, free_port

    live = _direct(tmp_path / "live")
    try:
        assert live.runtime.net is not None
        block = str(live.runtime.net.blocks[0])
        env = dict(os.environ, RUNTIME_STATE_DIR=str(tmp_path / "main"), RUNTIME_PROXY_PORT=str(free_port()),
                   RUNTIME_SANDBOX_NETWORK=block, RUNTIME_POOL_SIZE="0")
        out = subprocess.run([str(REPO_ROOT / "scripts" / "start"), "--no-sandbox"], env=env, cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 1
        errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
        assert errors == [f"error: cannot set up the sandbox network: sandbox network {block} overlaps {block}, "
                          f"held by the running runtime on state dir {live.runtime.root} (pid {os.getpid()}): "
                          "give this runtime another RUNTIME_SANDBOX_NETWORK, or leave it unset to share the "
                          "default range"], out.stderr
        assert "Traceback" not in out.stderr
    finally:
        live.close()


DIE = """
import os, sys
sys.path.insert(0, {root!r})
from pathlib import Path
from tests.runtime_direct import DirectRuntime
d = DirectRuntime(Path({state!r}), network={network!r}, dns={dns!r})
d.run(d.runtime.create(domain_allow_list="allowed.test"))
print(d.runtime.net.prefix, d.runtime.net.table, flush=True)
os._exit(0)  # no cleanup: as a SIGKILL would leave it
"""


def test_a_gone_runtimes_leftovers_are_swept_with_its_state_dir_deleted_and_a_live_ones_kept(
        inet: Namespace, tmp_path: Path) -> None:
    live = _direct(tmp_path / "live")
    try:
        live_sid = _create(live, domain_allow_list="allowed.test")
        net = live.runtime.net
        assert net is not None
        live_netns, live_links, live_dns = _netns(net.prefix), _links(net.prefix), _dnsmasq(tmp_path / "live")
        assert live_netns and live_links and len(live_dns) == 1
        dead_state = tmp_path / "dead"
        code = DIE.format(root=str(Path(__file__).resolve().parents[1]), state=str(dead_state),
                          network=DEFAULT_RANGE, dns=INTERNET_A)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        prefix, table = out.stdout.split()
        assert prefix != net.prefix
        # What it left: its netns, veth, table and resolver, and its state dir deleted too.
        assert _netns(prefix) and _links(prefix) and _has_table(table) and len(_dnsmasq(dead_state)) == 1
        shutil.rmtree(dead_state, ignore_errors=True)
        assert not dead_state.exists()
        third = _direct(tmp_path / "third")
        try:
            assert (_netns(prefix), _links(prefix), _has_table(table), _dnsmasq(dead_state)) == ([], [], False, [])
            assert _holder(dead_state) is None  # and its block is free
            assert (_netns(net.prefix), _links(net.prefix), _has_table(net.table)) == (live_netns, live_links, True)
            assert _dnsmasq(tmp_path / "live") == live_dns
            assert probe(live, live_sid, LISTED) == OPEN
        finally:
            third.close()
    finally:
        live.close()


def _kill(stack: Stack) -> None:
    os.kill(stack.process.pid, signal.SIGKILL)
    stack.process.wait()


def test_a_sigkilled_main_jobs_network_is_swept_by_the_next_and_a_live_ones_is_intact(
        inet: Namespace, tmp_path: Path) -> None:
    env = {"RUNTIME_SANDBOX_NETWORK": DEFAULT_RANGE, "RUNTIME_SANDBOX_DNS": INTERNET_A,
           "RUNTIME_NETWORK_BLOCK_ALL": "0"}
    stacks: list[Stack] = []
    try:
        live = start_stack(tmp_path / "live", "--no-sandbox", pool_size=0, extra_env=env)
        stacks.append(live)
        dead = start_stack(tmp_path / "dead", "--no-sandbox", pool_size=1, extra_env=env)
        stacks.append(dead)
        sandboxes = []
        for stack in (live, dead):
            created = stack.api("POST", "/sandbox", json={"domainAllowList": "allowed.test"})
            assert created.status_code == 200, created.text
            sandboxes.append(created.json()["id"])
        live_holder, dead_holder = _holder(live.state_dir), _holder(dead.state_dir)
        assert live_holder is not None and dead_holder is not None
        assert not set(live_holder["networks"]) & set(dead_holder["networks"])
        prefix, table = dead_holder["prefix"], dead_holder["table"]
        wait_for(lambda: len(_netns(prefix)) == 2)  # the sandbox and the pooled one
        live_netns, live_links = _netns(live_holder["prefix"]), _links(live_holder["prefix"])
        assert len(live_netns) == 1 and len(_dnsmasq(live.state_dir)) == 1
        _kill(dead)
        time.sleep(0.5)
        assert len(_netns(prefix)) == 2 and _links(prefix) and _has_table(table)  # left behind
        assert len(_dnsmasq(dead.state_dir)) == 1
        after = start_stack(tmp_path / "after", "--no-sandbox", pool_size=0, extra_env=env)
        stacks.append(after)
        assert (_netns(prefix), _links(prefix), _has_table(table), _dnsmasq(dead.state_dir)) == ([], [], False, [])
        assert _holder(dead.state_dir)["pid"] is None  # type: ignore[index]  # kept for its state dir
        assert _netns(live_holder["prefix"]) == live_netns and _links(live_holder["prefix"]) == live_links
        assert _has_table(live_holder["table"]) and len(_dnsmasq(live.state_dir)) == 1
        assert probe(live, sandboxes[0], LISTED) == OPEN  # its resolver fills its set, its NAT works
    finally:
        for stack in stacks:
            stack.stop()


def test_build_steps_take_slots_from_their_runtimes_blocks(inet: Namespace, tmp_path: Path) -> None:
    from runtime.images.stepnet import StepNetworks
    from runtime.network import Network
    from tests.net_helpers import PROBE

    nets = [Network(tmp_path / name, DEFAULT_RANGE, resolver=INTERNET_A) for name in ("a", "b")]
    opened: list[Network] = []
    try:
        for net in nets:
            net.open()
            opened.append(net)

        async def two_steps() -> list[list[str]]:
            async with StepNetworks(nets[0]).step() as one, StepNetworks(nets[1]).step() as two:
                reached = []
                for net, step in zip(nets, (one, two), strict=True):
                    name = step.netns.removeprefix("/run/netns/")
                    assert name.startswith(net.prefix)
                    slot = net.slot(int(name.removeprefix(net.prefix)))
                    assert any(slot.subnet.subnet_of(b) for b in net.blocks)  # its runtime's, no other's
                    out = await asyncio.to_thread(sh, "ip", "netns", "exec", name, sys.executable, "-c", PROBE, A)
                    reached.append(out.stdout.splitlines())
                return reached

        assert asyncio.run(two_steps()) == [OPEN, OPEN]
    finally:
        for net in opened:
            net.close()


def test_a_runtime_whose_blocks_are_full_takes_another(inet: Namespace, tmp_path: Path) -> None:
    from runtime.network import Network
    from tests.net_helpers import PROBE

    net = Network(tmp_path / "state", DEFAULT_RANGE, resolver=INTERNET_A)
    net.open()
    try:
        first = net.blocks[0]
        start = (int(first.network_address) - int(net.range.network_address)) // 4
        full = set(range(start, start + first.num_addresses // 4))
        slot = net.allocate(full)
        assert len(net.blocks) == 2 and not net.blocks[1].overlaps(first) and slot.subnet.subnet_of(net.blocks[1])
        assert _holder(tmp_path / "state")["networks"] == [str(b) for b in net.blocks]  # type: ignore[index]
        net.setup(slot, False, ())
        # Its NAT covers the new block too (the set it masquerades; a runtime of an older
        # version on this machine would masquerade the whole range, hiding its absence).
        assert _masqueraded(net.table) == [str(b) for b in sorted(net.blocks)]
        out = sh("ip", "netns", "exec", slot.name, sys.executable, "-c", PROBE, A)
        assert out.stdout.splitlines() == OPEN
    finally:
        net.close()


def test_a_record_entry_naming_anything_but_a_runtimes_names_is_never_acted_on(tmp_path: Path) -> None:
    import secrets

    from runtime.network import Network

    record = tmp_path / "host" / "network-ranges.json"
    record.parent.mkdir(mode=0o700)
    # A gone runtime's entry whose names would match everything (an empty prefix) or
    # someone else's: the host's own netns and tables stay.
    bystander = f"tzz{secrets.token_hex(3)}"
    sh("ip", "netns", "add", bystander)
    sh("nft", "add", "table", "inet", bystander)
    try:
        gone = {"state": str(tmp_path / "deleted"), "prefix": "", "table": bystander, "networks": [],
                "pid": 1, "start": "0", "boot": "other"}
        unused = next(f"sb{i:04x}-" for i in range(0xffff, 0, -1) if not _netns(f"sb{i:04x}-")
                      and not _links(f"sb{i:04x}-"))
        odd = dict(gone, state=str(tmp_path / "deleted2"), prefix=unused)  # a runtime's prefix, not its table
        record.write_text(json.dumps({"holders": [gone, odd]}))
        net = Network(tmp_path / "state", DEFAULT_RANGE, resolver=INTERNET_A, host=HostNetworks(record))
        net.open()
        try:
            assert _netns(bystander) == [bystander] and _has_table(bystander)
            assert [h["state"] for h in json.loads(record.read_text())["holders"]] == [str(tmp_path / "state")]
        finally:
            net.close()
    finally:
        sh("ip", "netns", "delete", bystander, check=False)
        sh("nft", "delete", "table", "inet", bystander, check=False)


def test_a_broken_record_is_a_clear_error(tmp_path: Path) -> None:
    from runtime.network import Network, NetworkError

    record = tmp_path / "host" / "network-ranges.json"
    record.parent.mkdir(mode=0o700)
    record.write_text("{not json")
    with pytest.raises(NetworkError) as info:
        Network(tmp_path / "state", DEFAULT_RANGE, host=HostNetworks(record)).open()
    assert info.value.status == 500 and str(record) in info.value.message and "repair or remove" in info.value.message


def test_a_setup_still_running_when_the_network_closes_leaves_nothing(tmp_path: Path) -> None:
    # As a pooled launch the runtime's close cancelled: its thread goes on making the netns.
    import threading

    from runtime.network import Network

    net = Network(tmp_path / "state", DEFAULT_RANGE, resolver=INTERNET_A)
    net.open()
    policy_set = threading.Event()
    original = net._set_policy  # noqa: SLF001

    def slow_policy(*args: Any, **kwargs: Any) -> None:
        original(*args, **kwargs)
        policy_set.set()
        time.sleep(1)  # close's sweep runs now, before the netns exists

    net._set_policy = slow_policy  # type: ignore[method-assign]  # noqa: SLF001
    slot = net.allocate(())
    errors: list[BaseException] = []
    thread = threading.Thread(target=lambda: _catch(errors, net.setup, slot, False, ()))
    thread.start()
    try:
        assert policy_set.wait(10)
        net.close()
    finally:
        thread.join(30)
    assert _netns(net.prefix) == [] and _links(net.prefix) == [] and not _has_table(net.table)
    with pytest.raises(Exception, match="closed"):
        net.setup(slot, False, ())


def _catch(errors: list[BaseException], fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except BaseException as exc:  # noqa: BLE001 -- reported by the test
        errors.append(exc)
