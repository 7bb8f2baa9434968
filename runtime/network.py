"""A network namespace, a veth pair and an address per sandbox; egress through NAT in
nftables, with Daytona's block-all and allow-list applied live (issue 16).

Root only. Each sandbox gets a slot: a /30 of the runtime's range (`RUNTIME_SANDBOX_NETWORK`,
default 10.213.0.0/16), taken only from the blocks this runtime holds in the host-wide record
(runtime/netranges.py), the host side of its veth holding `.1` (the sandbox's gateway and
resolver), the sandbox's `eth0` holding `.2`. No bridge: sandboxes share no link, so one
can only reach another through the host's forwarding, which drops it.

All rules live in one nftables table of this runtime's own (`inet sandbox_toolbox_<hash>`,
never another table touched); per-sandbox state is set elements, so a live policy change
is one atomic `nft` transaction and the rules themselves never change:

- prerouting: a packet from a sandbox veth must carry that veth's address and MAC
  (`ifaddr`, `ifmac` sets), else it is dropped: no spoofing another sandbox.
- input: from a sandbox only replies (the proxy's previews, the host's connections) and
  DNS to its gateway (DNAT to the host's resolver) get in: no host service, on loopback or
  any other host address, is reachable.
- forward: nothing into a sandbox but replies, and a linked follower's connections to its
  owner (`links`: the pair of their addresses, which anti-spoofing pins to their veths);
  out of a sandbox: block-all drops, DNS passes, private ranges (RFC 1918, CGNAT,
  link-local, loopback, multicast, the sandbox range) drop, a listed sandbox reaches only
  its CIDRs (`allow`) and the addresses its domains resolved to (a set per sandbox that
  its own dnsmasq fills, runtime/dns.py), the rest is masqueraded.
- DNS: to its gateway, DNAT to the host's resolver; a domain-listed sandbox's is never
  DNAT-ed (`resolving`: not to any host address either, which would reach the host's
  resolver all the same) and only its own gateway's port 53 takes it (`own_dns`), where
  its dnsmasq listens.
- output: only the runtime's own uid (the proxy, the runtime) opens connections into a
  sandbox, not other local users.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import subprocess
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from runtime import netsweep
from runtime.dns import DnsError, Resolvers
from runtime.netranges import HostNetworks, Holder, RangeError

log = logging.getLogger("runtime.network")

DEFAULT_RANGE = "10.213.0.0/16"
MAX_ALLOW_LIST = 10  # Daytona's limit
SANDBOX_IF = "eth0"
# Never egress to these, whatever the allow list says: the host's own and its private
# networks (and, added per runtime, the sandbox range itself).
PRIVATE = ("0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
           "172.16.0.0/12", "192.168.0.0/16", "224.0.0.0/3")


class NetworkError(Exception):
    """Bad input (`status` 400) or a failure of ip/nft (500)."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_allow_list(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """Daytona's `networkAllowList` ("a/n,b/n", at most 10 IPv4 CIDRs) as normalized CIDRs."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    cidrs: list[str] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        try:
            network = ipaddress.IPv4Network(item, strict=False)
        except ValueError:
            raise NetworkError(f"invalid networkAllowList entry {item!r}: use IPv4 CIDRs such as "
                               "203.0.113.0/24, separated by commas", 400) from None
        if str(network) not in cidrs:
            cidrs.append(str(network))
    if len(cidrs) > MAX_ALLOW_LIST:
        raise NetworkError(f"networkAllowList has {len(cidrs)} entries: at most {MAX_ALLOW_LIST} are allowed",
                           400)
    return tuple(cidrs)


def host_resolver(resolv_conf: Path = Path("/etc/resolv.conf")) -> str | None:
    """The host's first IPv4 nameserver (possibly 127.0.0.x: handled by route_localnet)."""
    try:
        lines = resolv_conf.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                return str(ipaddress.IPv4Address(parts[1]))
            except ValueError:
                continue
    return None


@dataclass(frozen=True)
class Slot:
    """One sandbox's share of the range: its /30, netns, veth and MAC."""

    index: int
    subnet: ipaddress.IPv4Network
    prefix: str  # this runtime's interface and netns prefix

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    @property
    def address(self) -> str:
        return str(self.subnet.network_address + 2)

    @property
    def name(self) -> str:
        # Netns and host-side veth share it; <= 15 characters (IFNAMSIZ).
        return f"{self.prefix}{self.index}"

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.name}"

    @property
    def mac(self) -> str:
        # Locally administered, fixed per slot: what the anti-spoofing set expects.
        return "02:5b:" + ":".join(f"{b:02x}" for b in self.subnet.network_address.packed)


def _run(argv: Sequence[str], stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise NetworkError(f"{' '.join(argv[:4])} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result


class Network:
    """This runtime's sandbox network: its nft table, netns and veths."""

    def __init__(self, root: Path, cidr: str = DEFAULT_RANGE, resolver: str | None = None,
                 host: HostNetworks | None = None) -> None:
        try:
            self.range = ipaddress.IPv4Network(cidr)
        except ValueError:
            raise NetworkError(f"invalid sandbox network {cidr!r}: use an IPv4 CIDR such as "
                               f"{DEFAULT_RANGE}", 400) from None
        if self.range.prefixlen > 30:
            raise NetworkError(f"sandbox network {cidr} is too small: at least a /30", 400)
        self.root = root
        # The default range is shared by the host's runtimes, a block each (as many as they
        # fill); one given explicitly is this runtime's alone (runtime/netranges.py).
        self.shared = self.range == ipaddress.IPv4Network(DEFAULT_RANGE)
        self.host = host or HostNetworks()
        self.blocks: list[ipaddress.IPv4Network] = []  # what this runtime holds: its slots' only source
        # Setups in flight (threads a cancelled create leaves running): close waits for them,
        # else one could make its netns after close's sweep and leak it.
        self._setups = 0
        self._closed = False
        self._idle = threading.Condition()
        digest = hashlib.sha256(str(root).encode()).hexdigest()
        # Until `open` takes them from the host-wide record (the same, unless another state
        # dir had them first): runtimes never touch each other's table or interfaces.
        self.table = f"sandbox_toolbox_{digest[:8]}"
        self.prefix = f"sb{digest[:4]}-"
        self.resolver = resolver if resolver is not None else host_resolver()
        self.capacity = 2 ** (30 - self.range.prefixlen)
        # Each slot's `allow` elements, domain list and link as loaded (this runtime is the
        # table's only writer, and the table is made fresh at open), so a change deletes
        # exactly those.
        self._allowed: dict[int, tuple[str, ...]] = {}
        self._domains: dict[int, tuple[str, ...]] = {}  # slots with a `dom<i>` set and chain
        self._links: dict[int, str] = {}  # follower slot -> owner address
        self.resolvers = Resolvers(root / "dns", self.table, self.resolver)

    # ---- the runtime's table ---------------------------------------------------------

    @staticmethod
    def available() -> str | None:
        """Why this host cannot do it, or None."""
        if os.geteuid() != 0:
            return "not root"
        for tool in ("ip", "nft", "nsenter"):
            if _run(["sh", "-c", f"command -v {tool}"], check=False).returncode != 0:
                return f"{tool} is not installed (apt-get install iproute2 nftables util-linux)"
        return None

    def open(self, addresses: Iterable[str] = ()) -> None:
        """Take this runtime's networks in the host-wide record (sweeping what runtimes that
        are gone left), sweep what a crash on this state dir left, then load a fresh table.
        `addresses`: its sandboxes', whose blocks it takes back first if free."""
        prefer = [ipaddress.IPv4Network(a) for a in addresses if a]
        # The record takes a runtime whose state dir is gone for gone: this one's must exist.
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            holder = self.host.claim(self.root, self.range, shared=self.shared, sweep=sweep_gone,
                                     prefer=prefer, avoid=self._foreign_routes)
        except RangeError as exc:
            raise NetworkError(exc.message, exc.status) from None
        self.prefix, self.table = holder.prefix, holder.table
        self.resolvers.table = self.table
        self.blocks = holder.nets()
        self._closed = False
        self.sweep()
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
        _run(["nft", "-f", "-"], stdin=self._ruleset())

    def close(self, addresses: Iterable[str] = ()) -> None:
        """`addresses`: its stopped sandboxes', whose blocks it keeps for its next start."""
        with self._idle:
            self._closed = True
            self._idle.wait_for(lambda: self._setups == 0, timeout=60)
        self.sweep()
        if self.blocks:
            self.host.release(self.root, addresses)

    def sweep(self) -> None:
        self.resolvers.sweep()
        netsweep.remove([self.prefix], [self.table])
        self._allowed.clear()
        self._domains.clear()
        self._links.clear()

    def _ruleset(self) -> str:
        p = f'"{self.prefix}*"'
        # Only its own blocks: on the shared range, another runtime's linked sandboxes talk
        # through the host's forwarding unmasqueraded.
        own = f"elements = {{ {', '.join(map(str, self.blocks))} }}" if self.blocks else ""
        private = ", ".join((*PRIVATE, str(self.range)))
        dnat = (f"iifname {p} fib daddr type local meta l4proto {{ udp, tcp }} th dport 53 "
                f"dnat ip to {self.resolver}") if self.resolver else ""
        return f"""
table inet {self.table} {{
  set ifaddr {{ type ifname . ipv4_addr; }}
  set ifmac {{ type ifname . ether_addr; }}
  set block_all {{ type ipv4_addr; }}
  set listed {{ type ipv4_addr; }}
  set allow {{ type ipv4_addr . ipv4_addr; flags interval; }}
  set own_dns {{ type ipv4_addr . ipv4_addr; }}
  set resolving {{ type ipv4_addr; }}
  set links {{ type ipv4_addr . ipv4_addr; }}
  set own {{ type ipv4_addr; flags interval; {own} }}
  map domains {{ type ipv4_addr : verdict; }}
  set private {{ type ipv4_addr; flags interval; auto-merge; elements = {{ {private} }} }}
  chain antispoof {{
    type filter hook prerouting priority -300; policy accept;
    iifname {p} meta nfproto ipv6 drop
    iifname {p} iifname . ether saddr != @ifmac drop
    iifname {p} iifname . ip saddr != @ifaddr drop
  }}
  chain dns {{
    type nat hook prerouting priority -100; policy accept;
    iifname {p} ip saddr @resolving accept
    {dnat}
  }}
  chain input {{
    type filter hook input priority 0; policy accept;
    iifname {p} ct state established,related accept
    iifname {p} ct status dnat ip saddr != @block_all accept
    iifname {p} meta l4proto {{ udp, tcp }} th dport 53 ip saddr . ip daddr @own_dns accept
    iifname {p} drop
  }}
  chain forward {{
    type filter hook forward priority 0; policy accept;
    iifname {p} oifname {p} ct state established,related accept
    iifname {p} oifname {p} ct state new ip saddr . ip daddr @links accept
    iifname {p} jump from_sandbox
    oifname {p} ct state established,related accept
    oifname {p} drop
  }}
  chain from_sandbox {{
    ip saddr @block_all drop
    ct status dnat accept
    ip daddr @private drop
    ip saddr vmap @domains
    ip saddr @listed ip saddr . ip daddr != @allow drop
    accept
  }}
  chain output {{
    type filter hook output priority 0; policy accept;
    oifname {p} ct state established,related accept
    oifname {p} meta skuid != {os.geteuid()} drop
  }}
  chain nat {{
    type nat hook postrouting priority 100; policy accept;
    ip saddr @own oifname != {p} masquerade
  }}
}}
"""

    # ---- slots -----------------------------------------------------------------------

    def slot(self, index: int) -> Slot:
        if not 0 <= index < self.capacity:
            raise NetworkError(f"no address {index} in {self.range}")
        subnet = ipaddress.IPv4Network((int(self.range.network_address) + 4 * index, 30))
        return Slot(index, subnet, self.prefix)

    def slot_of(self, address: str) -> Slot | None:
        """The slot of a sandbox's address, if this runtime holds it."""
        try:
            ip = ipaddress.IPv4Address(address)
        except ValueError:
            return None
        if not any(ip in block for block in self.blocks):
            return None
        return self.slot((int(ip) - int(self.range.network_address)) // 4)

    def allocate(self, taken: Iterable[int]) -> Slot:
        """The lowest free slot of this runtime's blocks, skipping subnets the host routes
        elsewhere (a network of the host's own, a runtime that keeps no record); on the
        shared range, a block more when they are full."""
        used = set(taken)
        foreign = self._foreign_routes()
        for block in list(self.blocks):
            if (slot := self._free_slot(block, used, foreign)) is not None:
                return slot
        if self.shared and self.blocks:
            try:
                block = self.host.grow(self.root, self.range, avoid=self._foreign_routes)
            except RangeError as exc:
                raise NetworkError(exc.message, exc.status) from None
            _run(["nft", "add", "element", "inet", self.table, "own", f"{{ {block} }}"])
            self.blocks.append(block)
            if (slot := self._free_slot(block, used, foreign)) is not None:
                return slot
        raise NetworkError(f"no free address left in the sandbox network {self.range}", 507)

    def _free_slot(self, block: ipaddress.IPv4Network, used: set[int],
                   foreign: list[ipaddress.IPv4Network]) -> Slot | None:
        first = (int(block.network_address) - int(self.range.network_address)) // 4
        for index in range(first, first + block.num_addresses // 4):
            if index in used:
                continue
            slot = self.slot(index)
            if not any(slot.subnet.overlaps(route) for route in foreign):
                return slot
        return None

    def _foreign_routes(self) -> list[ipaddress.IPv4Network]:
        out = _run(["ip", "-json", "-4", "route", "show", "table", "all"], check=False).stdout.strip()
        routes: list[ipaddress.IPv4Network] = []
        for route in json.loads(out) if out else []:
            dst, dev = route.get("dst", ""), route.get("dev", "")
            if dev.startswith(self.prefix) or dst in ("", "default") or route.get("type") in ("local", "broadcast"):
                continue
            try:
                network = ipaddress.IPv4Network(dst, strict=False)
            except ValueError:
                continue
            if network.overlaps(self.range) and network.prefixlen >= self.range.prefixlen:
                routes.append(network)
        return routes

    def setup(self, slot: Slot, block_all: bool, allow_list: Sequence[str], domains: Sequence[str] = (),
              link_to: str | None = None) -> None:
        """Netns, veth and addresses for a slot, its policy set before anything runs.
        `link_to`: the owner's address, for a linked follower."""
        with self._idle:
            if self._closed:
                raise NetworkError("the sandbox network is closed: the runtime is stopping", 503)
            self._setups += 1
        try:
            self._setup(slot, block_all, allow_list, domains, link_to)
        finally:
            with self._idle:
                self._setups -= 1
                self._idle.notify_all()

    def _setup(self, slot: Slot, block_all: bool, allow_list: Sequence[str], domains: Sequence[str],
               link_to: str | None) -> None:
        self.teardown(slot)  # whatever a crash left of this slot
        if any(slot.subnet.overlaps(route) for route in self._foreign_routes()):
            raise NetworkError(f"the sandbox's address {slot.address} is in {slot.subnet}, which this host "
                               "now routes elsewhere (another runtime on the same RUNTIME_SANDBOX_NETWORK?)", 409)
        try:
            self._set_policy(slot, block_all, allow_list, domains, spoof_guard=True, link_to=link_to)
            host_if, ns = slot.name, slot.name
            _run(["ip", "netns", "add", ns])
            _run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", SANDBOX_IF, "netns", ns])
            # No IPv6 on either end: a link-local address would be an unfiltered way in.
            Path(f"/proc/sys/net/ipv6/conf/{host_if}/disable_ipv6").write_text("1\n")
            if self.resolver and ipaddress.IPv4Address(self.resolver).is_loopback:
                # DNAT to the host's 127.0.0.x resolver needs this on the ingress interface.
                Path(f"/proc/sys/net/ipv4/conf/{host_if}/route_localnet").write_text("1\n")
            # Batches: a subprocess per step made a cold start ~160 ms slower.
            _run(["ip", "-batch", "-"], stdin=f"addr add {slot.gateway}/30 dev {host_if}\n"
                                               f"link set {host_if} up\n")
            _run(["ip", "netns", "exec", ns, "sh", "-c",
                  f"echo 1 > /proc/sys/net/ipv6/conf/{SANDBOX_IF}/disable_ipv6"])
            _run(["ip", "-n", ns, "-batch", "-"], stdin=(
                f"link set {SANDBOX_IF} address {slot.mac}\n"
                f"addr add {slot.address}/30 dev {SANDBOX_IF}\n"
                f"link set {SANDBOX_IF} up\nlink set lo up\n"
                f"route add default via {slot.gateway}\n"))
            self._sync_resolver(slot, restart=True)  # listens on the gateway, so after it exists
        except BaseException:
            self.teardown(slot)
            raise

    def teardown(self, slot: Slot) -> None:
        self.resolvers.stop(slot.name)
        _run(["ip", "netns", "delete", slot.name], check=False)  # takes the veth with it
        _run(["ip", "link", "delete", slot.name], check=False)
        self._forget(slot)

    def set_policy(self, slot: Slot, block_all: bool, allow_list: Sequence[str], domains: Sequence[str] = ()) -> None:
        before = self._domains.get(slot.index)
        self._set_policy(slot, block_all, allow_list, domains, spoof_guard=False)
        self._sync_resolver(slot, restart=self._domains.get(slot.index) != before)

    @staticmethod
    def _domain_set(slot: Slot) -> str:
        return f"dom{slot.index}"

    def _set_policy(self, slot: Slot, block_all: bool, allow_list: Sequence[str], domains: Sequence[str], *,
                    spoof_guard: bool, link_to: str | None = None) -> None:
        """One transaction: the old policy's elements go and the new ones come at once.

        A domain-listed slot has a set `dom<i>` (filled by its dnsmasq) and a chain of the
        same name accepting it, jumped to through the `domains` map; a change that drops a
        domain empties the set (what was resolved for which domain is not known), so
        connections to the remaining domains wait for their next lookup."""
        t, a = self.table, slot.address
        lines = [self._flush_policy(slot)]
        if spoof_guard:
            lines += [f'add element inet {t} ifaddr {{ "{slot.name}" . {a} }}',
                      f'add element inet {t} ifmac {{ "{slot.name}" . {slot.mac} }}']
        if link_to is not None:
            lines.append(f"add element inet {t} links {{ {a} . {link_to} }}")
        active = () if block_all else tuple(domains)
        old, dom = self._domains.get(slot.index), self._domain_set(slot)
        if active and old is None:
            lines += [f"add set inet {t} {dom} {{ type ipv4_addr; }}", f"add chain inet {t} {dom}",
                      f"add rule inet {t} {dom} ip daddr @{dom} accept"]
        elif active and old is not None and set(old) - set(active):
            lines.append(f"flush set inet {t} {dom}")
        elif not active and old is not None:
            lines += [f"flush chain inet {t} {dom}", f"delete chain inet {t} {dom}", f"delete set inet {t} {dom}"]
        if block_all:
            lines.append(f"add element inet {t} block_all {{ {a} }}")
        elif allow_list or active:
            lines.append(f"add element inet {t} listed {{ {a} }}")
            if allow_list:
                lines.append(f"add element inet {t} allow {{ {', '.join(f'{a} . {c}' for c in allow_list)} }}")
            if active:
                lines += [f"add element inet {t} domains {{ {a} : jump {dom} }}",
                          f"add element inet {t} own_dns {{ {a} . {slot.gateway} }}",
                          f"add element inet {t} resolving {{ {a} }}"]
        _run(["nft", "-f", "-"], stdin="\n".join(lines) + "\n")
        self._allowed[slot.index] = () if block_all else tuple(allow_list)
        if active:
            self._domains[slot.index] = active
        else:
            self._domains.pop(slot.index, None)
        if link_to is not None:
            self._links[slot.index] = link_to

    def _sync_resolver(self, slot: Slot, *, restart: bool) -> None:
        """The slot's dnsmasq runs exactly while it has domains (restarted on a change:
        dnsmasq reads its domains only at start)."""
        domains = self._domains.get(slot.index)
        if domains is None:
            self.resolvers.stop(slot.name)
            return
        if restart or not self.resolvers.running(slot.name):
            try:
                self.resolvers.start(slot.name, slot.gateway, self._domain_set(slot), domains)
            except DnsError as exc:
                raise NetworkError(exc.message, exc.status) from None

    def _flush_policy(self, slot: Slot) -> str:
        """nft commands removing a slot's policy elements (none of them need exist)."""
        t, a = self.table, slot.address
        lines = [f"add element inet {t} block_all {{ {a} }}", f"delete element inet {t} block_all {{ {a} }}",
                 f"add element inet {t} listed {{ {a} }}", f"delete element inet {t} listed {{ {a} }}"]
        for cidr in self._allowed.get(slot.index, ()):
            lines.append(f"delete element inet {t} allow {{ {a} . {cidr} }}")
        if slot.index in self._domains:
            lines += [f"delete element inet {t} domains {{ {a} }}",
                      f"delete element inet {t} own_dns {{ {a} . {slot.gateway} }}",
                      f"delete element inet {t} resolving {{ {a} }}"]
        return "\n".join(lines)

    def unlink(self, slot: Slot) -> None:
        """A follower's link goes (its owner is deleted: the address may be handed out again)."""
        owner = self._links.pop(slot.index, None)
        if owner is not None:
            _run(["nft", "delete", "element", "inet", self.table, "links", f"{{ {slot.address} . {owner} }}"])

    def _forget(self, slot: Slot) -> None:
        t, a = self.table, slot.address
        lines = [self._flush_policy(slot),
                 f'add element inet {t} ifaddr {{ "{slot.name}" . {a} }}',
                 f'delete element inet {t} ifaddr {{ "{slot.name}" . {a} }}',
                 f'add element inet {t} ifmac {{ "{slot.name}" . {slot.mac} }}',
                 f'delete element inet {t} ifmac {{ "{slot.name}" . {slot.mac} }}']
        if slot.index in self._domains:
            dom = self._domain_set(slot)
            lines += [f"flush chain inet {t} {dom}", f"delete chain inet {t} {dom}", f"delete set inet {t} {dom}"]
        owner = self._links.get(slot.index)
        if owner is not None:
            lines.append(f"delete element inet {t} links {{ {a} . {owner} }}")
        _run(["nft", "-f", "-"], stdin="\n".join(lines) + "\n", check=False)
        self._allowed.pop(slot.index, None)
        self._domains.pop(slot.index, None)
        self._links.pop(slot.index, None)

    def resolv_conf(self, slot: Slot) -> str:
        # The gateway answers DNS by DNAT to the host's resolver (which may be 127.0.0.53,
        # unreachable from a netns by itself).
        return f"nameserver {slot.gateway}\noptions edns0\n"


def sweep_gone(holders: list[Holder]) -> None:
    """What runtimes that are gone left (runtime/netranges.py decides they are)."""
    netsweep.remove([h.prefix for h in holders], [h.table for h in holders],
                    [Path(h.state) / "dns" for h in holders])
