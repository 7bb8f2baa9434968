"""The aiohttp client session behind WebSocket relaying (HTTP goes over `pool.py`).

A module of its own so that aiohttp (~10 MiB and ~90 ms of imports) loads on the first
WebSocket relayed, not in every daemon and proxy at start (docs/footprint.md).
"""

from __future__ import annotations

import socket

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

READ_BUFFER = 256 * 1024


class LoopbackResolver(AbstractResolver):
    """`localhost` is both 127.0.0.1 and ::1, tried in that order, without a DNS thread hop."""

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        return [
            ResolveResult(hostname=host, host="127.0.0.1", port=port, family=socket.AF_INET, proto=0, flags=0),
            ResolveResult(hostname=host, host="::1", port=port, family=socket.AF_INET6, proto=0, flags=0),
        ]

    async def close(self) -> None:
        return None


def new_session(*, unix_path: str | None = None, loopback: bool = False, keepalive: float = 30.0) -> aiohttp.ClientSession:
    """A pooled session tuned for relaying: no decompression, no timeouts on streams."""
    connector: aiohttp.BaseConnector
    if unix_path is not None:
        connector = aiohttp.UnixConnector(path=unix_path, limit=0, keepalive_timeout=keepalive)
    else:
        connector = aiohttp.TCPConnector(
            limit=0, keepalive_timeout=keepalive, resolver=LoopbackResolver() if loopback else None,
            use_dns_cache=True, ttl_dns_cache=10,
        )
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_connect=10, sock_read=None),
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        read_bufsize=READ_BUFFER,
        max_field_size=65536,
        max_line_size=65536,
        cookie_jar=aiohttp.DummyCookieJar(),
    )
