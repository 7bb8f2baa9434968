"""Removing a runtime's network state by its names: netns and host-side veths by prefix,
its nftables table, its dnsmasq processes. Used for a runtime's own leftovers at start and
stop, and for those of runtimes that are gone (runtime/netranges.py decides which).

One `ip -batch` per kind, not a process per name: a hundred leaked sandboxes are swept in
about the time of one."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

from runtime.dns import Resolvers


# The only names a runtime ever gives (runtime/netranges.py): a record's entry naming anything
# else (an empty prefix would match every interface on the host) is never acted on.
_PREFIX = re.compile(r"sb[0-9a-f]{4}-")
_TABLE = re.compile(r"sandbox_toolbox_[0-9a-f]{8}")


def _ip(*argv: str, stdin: str | None = None) -> str:
    result = subprocess.run(["ip", *argv], input=stdin, capture_output=True, text=True, timeout=60, check=False)
    return result.stdout.strip()


def netns_named(prefixes: Sequence[str]) -> list[str]:
    out = _ip("-json", "netns", "list")
    return [n for n in (e.get("name", "") for e in (json.loads(out) if out else [])) if n.startswith(tuple(prefixes))]


def links_named(prefixes: Sequence[str]) -> list[str]:
    out = _ip("-json", "link", "show")
    return [n for n in (e.get("ifname", "") for e in (json.loads(out) if out else []))
            if n.startswith(tuple(prefixes))]


def remove(prefixes: Sequence[str], tables: Sequence[str] = (), dns_dirs: Sequence[Path] = ()) -> None:
    """Everything named with `prefixes` (netns, then the veths a netns still held by a
    process keeps), `tables`, and the dnsmasq processes configured from `dns_dirs`."""
    prefixes = [p for p in prefixes if _PREFIX.fullmatch(p)]
    tables = [t for t in tables if _TABLE.fullmatch(t)]
    if not prefixes:
        return
    Resolvers.stop_strays(dns_dirs)
    if names := netns_named(prefixes):
        _ip("-force", "-batch", "-", stdin="".join(f"netns delete {n}\n" for n in names))
    if names := links_named(prefixes):
        _ip("-force", "-batch", "-", stdin="".join(f"link delete {n}\n" for n in names))
    if tables:
        # `add` first: deleting a table that is not there would fail the whole batch.
        batch = "".join(f"add table inet {t}\ndelete table inet {t}\n" for t in tables)
        subprocess.run(["nft", "-f", "-"], input=batch,
                       capture_output=True, text=True, timeout=60, check=False)
