"""Listening TCP sockets from /proc/net/tcp and /proc/net/tcp6.

Daytona polls the table every second in the background; reading it when asked costs a few
hundred microseconds and nothing at all while nobody asks, and is never stale.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
LISTEN = "0A"  # TCP_LISTEN in include/net/tcp_states.h, as the tables print it

# Daytona accepts only this range on `/port/{port}/in-use` (toolbox-api.md §13).
MIN_PORT, MAX_PORT = 3000, 9999


def parse_listening(lines: Iterable[str]) -> set[int]:
    """Ports of the LISTEN rows of one table (IPv4 or IPv6: same column layout)."""
    ports: set[int] = set()
    for line in lines:
        fields = line.split()
        # sl local_address rem_address st ...; the header row has no ':' in field 1.
        if len(fields) < 4 or fields[3] != LISTEN or ":" not in fields[1]:
            continue
        try:
            ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        except ValueError:
            continue
    return ports


def listening_ports(tables: Iterable[Path] = TABLES) -> set[int]:
    """Blocking (small /proc reads): call from a worker thread."""
    ports: set[int] = set()
    for table in tables:
        try:
            with open(table, encoding="ascii", errors="replace") as lines:
                ports |= parse_listening(lines)
        except OSError:
            continue  # no IPv6 in this kernel, or /proc not mounted: report what we can
    return ports
