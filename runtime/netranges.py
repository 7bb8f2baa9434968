"""Which runtime on this host holds which sandbox networks: one host-wide record, as for uid
ranges (runtime/uids.py), so two runtimes never hand out the same sandbox address.

The record (`/var/lib/sandbox-toolbox/network-ranges.json`, 0600, under an exclusive lock;
`RUNTIME_NETWORK_RANGES` moves it) lists per state dir: the runtime holding it (pid, its
start time and the boot, so a reused pid is not mistaken for it), its interface prefix and
nftables table (unique on the host, so whose a netns, veth or table is can be decided), and
its networks:

- on the default range (shared): /24 blocks (64 sandboxes each), one at start and one more
  whenever those are full, free ones first;
- on a range given explicitly: that whole range, refused when it overlaps a live runtime's.

A runtime that is gone (pid gone or reused, another boot, or its state dir deleted) has its
leftovers swept by the next runtime to start (`sweep`, under the lock, before anything is
handed out). The networks its stopped sandboxes have addresses in stay its own while its state
dir exists (a restart finds them again), unless the default range runs out of free blocks or
an explicit range claims them; with its state dir gone, they are free at once. A runtime that
stops cleanly frees the networks none of its sandboxes has an address in.
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import json
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from runtime.private import private_dir, write_private

HOST_NETWORKS = Path(os.environ.get("RUNTIME_NETWORK_RANGES", "/var/lib/sandbox-toolbox/network-ranges.json"))
BLOCK_PREFIX = 24
Net = ipaddress.IPv4Network


class RangeError(Exception):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass
class Holder:
    """One state dir's entry in the record."""

    state: str
    prefix: str  # its netns and host-side veth names: `<prefix><slot>`
    table: str  # its nftables table (inet)
    networks: list[str] = field(default_factory=list)
    pid: int | None = None  # None: no runtime runs on it
    start: str = ""  # the pid's start time (clock ticks since boot)
    boot: str = ""

    def nets(self) -> list[Net]:
        return [Net(n) for n in self.networks]

    def overlaps(self, network: Net) -> bool:
        return any(n.overlaps(network) for n in self.nets())


def _boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, starttime


def alive(holder: Holder) -> bool:
    return (holder.pid is not None and holder.boot == _boot_id() and _start_time(holder.pid) == holder.start
            and Path(holder.state).is_dir())


def _names(state: str, attempt: int) -> tuple[str, str]:
    # The first attempt is what every runtime before this record used, so a state dir's own
    # leftovers from then still carry its prefix.
    digest = hashlib.sha256((state if attempt == 0 else f"{state}#{attempt}").encode()).hexdigest()
    return f"sb{digest[:4]}-", f"sandbox_toolbox_{digest[:8]}"


Sweep = Callable[[list[Holder]], None]
Routes = Callable[[], list[Net]]


class HostNetworks:
    """The record, and every change to it under its lock."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or HOST_NETWORKS

    @contextmanager
    def _locked(self) -> Iterator[list[Holder]]:
        private_dir(self.path.parent)
        fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                raw = json.loads(self.path.read_text()).get("holders", [])
                holders = [Holder(**{k: h[k] for k in Holder.__dataclass_fields__ if k in h}) for h in raw]
            except FileNotFoundError:
                holders = []
            except (ValueError, TypeError, AttributeError) as exc:
                raise RangeError(f"{self.path} is not a record of sandbox networks ({exc}): repair or remove "
                                 "it (every runtime on this host reads it)", 500) from None
            before = [asdict(h) for h in holders]
            yield holders
            after = [asdict(h) for h in holders]
            if after != before:
                write_private(self.path, json.dumps({"holders": after}, indent=1).encode())
        finally:
            os.close(fd)

    def claim(self, state: Path, cidr: Net, *, shared: bool, sweep: Sweep,
              prefer: Iterable[Net] = (), avoid: Routes = list) -> Holder:
        """This runtime's entry, holding its networks: the leftovers of gone runtimes swept
        first (`sweep`, given their entries). `prefer`: blocks to take first if free (its
        sandboxes' addresses); `avoid`: what the host routes elsewhere (asked after the
        sweep, which takes the gone runtimes' routes away)."""
        with self._locked() as holders:
            self._sweep_gone(holders, sweep)
            me = self._mine(holders, str(state))
            others = [h for h in holders if h is not me]
            if shared:
                me.networks = [str(n) for n in me.nets() if n.subnet_of(cidr) and not
                               any(o.overlaps(n) for o in others)]
                if not me.networks:
                    me.networks = [str(self._block(others, cidr, list(prefer), avoid()))]
            else:
                live = [h for h in others if h.overlaps(cidr) and h.pid is not None]
                if live:
                    h = live[0]
                    theirs = next(n for n in h.nets() if n.overlaps(cidr))
                    raise RangeError(f"sandbox network {cidr} overlaps {theirs}, held by the running runtime "
                                     f"on state dir {h.state} (pid {h.pid}): give this runtime another "
                                     "RUNTIME_SANDBOX_NETWORK, or leave it unset to share the default range",
                                     409)
                for h in others:  # gone runtimes' networks in the way: this range claims them
                    h.networks = [str(n) for n in h.nets() if not n.overlaps(cidr)]
                me.networks = [str(cidr)]
            me.pid, me.start, me.boot = os.getpid(), _start_time(os.getpid()) or "", _boot_id()
            return Holder(**asdict(me))

    def grow(self, state: Path, cidr: Net, avoid: Routes = list) -> Net:
        """One more block of the shared range for this runtime."""
        with self._locked() as holders:
            me = self._mine(holders, str(state))
            block = self._block(holders, cidr, [], avoid())  # its own blocks are taken too
            me.networks.append(str(block))
            return block

    def release(self, state: Path, keep: Iterable[str] = ()) -> None:
        """This runtime stops (cleanly): of its networks, those holding an address in `keep`
        (its stopped sandboxes') stay its state dir's, the others are free."""
        addresses = [ipaddress.IPv4Address(a) for a in keep]
        with self._locked() as holders:
            for h in holders:
                if h.state == str(state) and h.pid == os.getpid():
                    h.pid, h.start = None, ""
                    h.networks = [str(n) for n in h.nets() if any(a in n for a in addresses)]

    @staticmethod
    def _sweep_gone(holders: list[Holder], sweep: Sweep) -> None:
        gone = [h for h in holders if (h.pid is not None or not Path(h.state).is_dir()) and not alive(h)]
        if gone:
            sweep(gone)
        for h in gone:
            h.pid, h.start = None, ""
            if not Path(h.state).is_dir():
                holders.remove(h)  # nothing of it can come back: its networks are free

    @staticmethod
    def _mine(holders: list[Holder], state: str) -> Holder:
        """The state dir's entry (taken over whatever runs: a state dir has one runtime),
        made with names no other entry has."""
        for h in holders:
            if h.state == state:
                return h
        taken = {n for h in holders for n in (h.prefix, h.table)}
        attempt = 0
        while (names := _names(state, attempt))[0] in taken or names[1] in taken:
            attempt += 1
        holder = Holder(state, *names)
        holders.append(holder)
        return holder

    @staticmethod
    def _block(others: list[Holder], cidr: Net, prefer: list[Net], avoid: list[Net]) -> Net:
        """A free block (preferred ones first), else one only gone runtimes hold (theirs are
        then dropped from their entries)."""
        size = min(max(BLOCK_PREFIX, cidr.prefixlen), 30)
        blocks = list(cidr.subnets(new_prefix=size))
        ordered = [b for b in blocks if any(b.overlaps(p) for p in prefer)] + blocks
        usable = [b for b in ordered if not any(b.overlaps(a) for a in avoid)]
        for block in usable:
            if not any(h.overlaps(block) for h in others):
                return block
        for block in usable:
            if not any(h.overlaps(block) for h in others if h.pid is not None):
                for h in others:
                    h.networks = [str(n) for n in h.nets() if not n.overlaps(block)]
                return block
        raise RangeError(f"no free block of {cidr} left for this runtime's sandboxes: every /{size} is held "
                         "by a running runtime or routed elsewhere", 507)
