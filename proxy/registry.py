"""Registries map a sandbox id to its daemon address, preview token and public flag.

Chosen by a URL-like spec:
- `file:PATH`      JSON `{"sandboxes": {"<id>": {"url": ..., "public": false, "token": ...,
                   "organization": ...}}, "api_keys": {"<sha256 hex>": "<organization>"}}`,
                   reloaded when the file changes (the control plane writes it); an
                   organization's key is good for that organization's sandboxes only.
- `template:URL`   the address is computed from the id (`http://sbx-{id}.svc:2280`).
- `redis://...`    a hash per sandbox (`HSET sandbox:<id> url ... token ... public true`),
                   written by any control plane; lookups cached briefly with single-flight;
                   last activity written back into the hash (`lastActivity`, unix seconds).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Protocol, cast
from urllib.parse import parse_qs, urlsplit, urlunsplit

import anyio

from proxy.caches import BoundedDict

log = logging.getLogger("proxy.registry")


@dataclass(frozen=True)
class Sandbox:
    id: str
    url: str  # http://host:port or unix:/path/toolbox.sock
    token: str | None = None
    public: bool = False
    organization: str | None = None  # None: any valid API key may use it (as before tenancy)
    files_key: str | None = None  # the key of Daytona's signed file URLs (proxy/fileurls.py)
    revoked: frozenset[str] = frozenset()  # signed preview labels expired early
    # unix: only: the uid the daemon must run as (checked with SO_PEERCRED on connect)
    uid: int | None = None
    # The sandbox's own IPv4 address (issue 16): previews connect to address:port in one hop.
    address: str | None = None


class RegistryError(Exception):
    """The registry could not be asked (not: the sandbox is unknown)."""


class Registry(Protocol):
    async def get(self, sandbox_id: str) -> Sandbox | None: ...

    async def record_activity(self, sandbox_id: str, when: float) -> None: ...

    async def key_organization(self, key_sha256_hex: str) -> str | None:
        """The organization of a tenant's API key, by its SHA-256; None if unknown."""

    async def close(self) -> None: ...


def _truthy(value: object) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def valid_address(url: str) -> bool:
    if url.startswith("unix:"):
        return len(url) > len("unix:")
    parts = urlsplit(url)
    return parts.scheme == "http" and bool(parts.hostname)


def _entry(sandbox_id: str, data: dict[str, object]) -> Sandbox | None:
    url = data.get("url")
    if not isinstance(url, str) or not valid_address(url):
        return None
    token = data.get("token")
    organization = data.get("organization")
    files_key = data.get("files_key")
    revoked = data.get("revoked")
    uid = data.get("uid")
    peer_uid: int | None = None
    if uid not in (None, "", b""):
        try:
            peer_uid = int(uid)  # type: ignore[call-overload]  # str, bytes (Redis) or int (JSON)
        except (TypeError, ValueError):
            return None  # a malformed uid must not silently switch the check off
    return Sandbox(sandbox_id, url.rstrip("/"), token if isinstance(token, str) and token else None,
                   _truthy(data.get("public", False)),
                   organization if isinstance(organization, str) and organization else None,
                   files_key if isinstance(files_key, str) and files_key else None,
                   frozenset(r for r in revoked if isinstance(r, str)) if isinstance(revoked, list) else frozenset(),
                   peer_uid, _ipv4(data.get("address")))


def _ipv4(value: object) -> str | None:
    # Only an IPv4 literal: never a name the proxy would resolve, nor a URL with a path.
    if not isinstance(value, str):
        return None
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        return None


class FileRegistry:
    """Re-reads the file when its mtime, size or inode changes (checked at most every 0.25 s,
    or every 5 ms for an id or API key it does not know: a sandbox just created is routed,
    and a key just made accepted, as soon as the control plane has written it, instead of
    up to 0.25 s later)."""

    CHECK_INTERVAL = 0.25
    MISS_CHECK_INTERVAL = 0.005  # bounds the stat calls unknown ids can cause to 200/s

    def __init__(self, path: str) -> None:
        self.path = path
        self._entries: dict[str, Sandbox] = {}
        self._key_orgs: dict[str, str] = {}
        self._signature: tuple[int, int, int] | None = None
        self._checked = 0.0
        self._lock = asyncio.Lock()

    def _load(self) -> tuple[tuple[int, int, int] | None, tuple[dict[str, Sandbox], dict[str, str]] | None]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None, ({}, {})
        signature = (st.st_mtime_ns, st.st_size, st.st_ino)
        if signature == self._signature:
            return signature, None
        try:
            with open(self.path, encoding="utf-8") as handle:
                document = json.load(handle)
            raw = document.get("sandboxes", {})
            if not isinstance(raw, dict):
                raise ValueError("'sandboxes' is not an object")
            raw_keys = document.get("api_keys", {})
            if not isinstance(raw_keys, dict):
                raise ValueError("'api_keys' is not an object")
        except (OSError, ValueError) as exc:
            # A half-written file (the runtime should rename into place): keep the last good map.
            log.warning("registry file %s unreadable, keeping the previous entries: %s", self.path, exc)
            return self._signature, None
        keys = {str(k).lower(): v for k, v in raw_keys.items() if isinstance(v, str) and v}
        entries = {}
        for sandbox_id, data in raw.items():
            entry = _entry(str(sandbox_id), data) if isinstance(data, dict) else None
            if entry is None:
                log.warning("registry file %s: entry %r has no valid url", self.path, sandbox_id)
                continue
            entries[entry.id] = entry
        return signature, (entries, keys)

    async def _refresh(self, interval: float = CHECK_INTERVAL) -> None:
        now = time.monotonic()
        if now - self._checked < interval:
            return
        async with self._lock:
            if time.monotonic() - self._checked < interval:
                return
            signature, loaded = await anyio.to_thread.run_sync(self._load)
            if loaded is not None:
                self._entries, self._key_orgs = loaded
            self._signature = signature
            self._checked = time.monotonic()

    async def get(self, sandbox_id: str) -> Sandbox | None:
        await self._refresh()
        entry = self._entries.get(sandbox_id)
        if entry is None:
            await self._refresh(self.MISS_CHECK_INTERVAL)
            entry = self._entries.get(sandbox_id)
        return entry

    async def record_activity(self, sandbox_id: str, when: float) -> None:
        # The runtime owns the file; activity is exposed through /metrics instead.
        return None

    async def key_organization(self, key_sha256_hex: str) -> str | None:
        await self._refresh()
        organization = self._key_orgs.get(key_sha256_hex)
        if organization is None:
            # A key made a moment ago, as for ids: the same 5 ms bound on re-checks, so a
            # flood of bad keys costs at most 200 stat calls a second.
            await self._refresh(self.MISS_CHECK_INTERVAL)
            organization = self._key_orgs.get(key_sha256_hex)
        return organization

    async def close(self) -> None:
        return None


class TemplateRegistry:
    def __init__(self, template: str) -> None:
        if "{id}" not in template:
            raise ValueError("a template: registry needs {id} in its URL, e.g. template:http://sbx-{id}.sandboxes:2280")
        self.template = template.rstrip("/")

    async def get(self, sandbox_id: str) -> Sandbox | None:
        return Sandbox(sandbox_id, self.template.replace("{id}", sandbox_id))

    async def record_activity(self, sandbox_id: str, when: float) -> None:
        return None

    async def key_organization(self, key_sha256_hex: str) -> str | None:
        return None

    async def close(self) -> None:
        return None


_RECORD_ACTIVITY = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('HSET', KEYS[1], 'lastActivity', ARGV[1])
end
return 0
"""


class RedisRegistry:
    """Cached lookups (positive `ttl`, negative `negative_ttl`) with one in-flight query per id.

    The query runs as a task the registry owns, and every caller waits on it through
    `asyncio.shield`: a caller that is cancelled (its client went away) stops waiting, but
    the query goes on for the others, and its CancelledError is never handed to them.
    """

    def __init__(self, url: str, ttl: float = 2.0, negative_ttl: float = 1.0) -> None:
        import redis.asyncio as redis

        parts = urlsplit(url)
        query = parse_qs(parts.query)
        self.prefix = query.pop("prefix", ["sandbox:"])[0]
        clean = urlunsplit((parts.scheme, parts.netloc, parts.path, "&".join(f"{k}={v[0]}" for k, v in query.items()), ""))
        self._client = redis.Redis.from_url(clean, socket_timeout=5, socket_connect_timeout=2, decode_responses=True)
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self._cache: BoundedDict[str, tuple[float, Sandbox | None]] = BoundedDict(100_000)
        self._inflight: dict[str, asyncio.Task[Sandbox | None]] = {}
        self._record = self._client.register_script(_RECORD_ACTIVITY)
        self.lookups = 0  # queries actually sent to Redis (for tests and metrics)

    async def _query(self, sandbox_id: str) -> Sandbox | None:
        self.lookups += 1
        try:
            data = await self._client.hgetall(self.prefix + sandbox_id)
        except Exception as exc:  # redis raises many classes; all mean "cannot ask now"
            raise RegistryError(f"the Redis registry is unreachable: {exc}") from exc
        # decode_responses=True: keys and values are str (the client's annotation allows bytes)
        return _entry(sandbox_id, cast("dict[str, object]", data)) if data else None

    async def get(self, sandbox_id: str) -> Sandbox | None:
        now = time.monotonic()
        cached = self._cache.get(sandbox_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        task = self._inflight.get(sandbox_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._lookup(sandbox_id), name=f"registry lookup {sandbox_id}")
            self._inflight[sandbox_id] = task
            task.add_done_callback(_retrieve)
        return await asyncio.shield(task)

    async def _lookup(self, sandbox_id: str) -> Sandbox | None:
        try:
            entry = await self._query(sandbox_id)
        finally:
            del self._inflight[sandbox_id]
        self._cache[sandbox_id] = (time.monotonic() + (self.ttl if entry else self.negative_ttl), entry)
        return entry

    async def key_organization(self, key_sha256_hex: str) -> str | None:
        return None  # tenant keys live in file: registries (the control plane) for now

    async def record_activity(self, sandbox_id: str, when: float) -> None:
        try:
            await self._record(keys=[self.prefix + sandbox_id], args=[f"{when:.3f}"])
        except Exception as exc:
            log.warning("could not record activity of %s in Redis: %s", sandbox_id, exc)

    async def close(self) -> None:
        # Queries still in flight have no one left to answer: end them before the client.
        pending = list(self._inflight.values())
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._inflight.clear()  # (a task cancelled before it ran never removed itself)
        await self._client.aclose()


def _retrieve(task: asyncio.Task[Sandbox | None]) -> None:
    """Mark a lookup's exception as seen: when every caller was cancelled, nobody else does."""
    if not task.cancelled():
        task.exception()


def open_registry(spec: str, cache_ttl: float = 2.0) -> Registry:
    if spec.startswith("file:"):
        return FileRegistry(spec[len("file:"):])
    if spec.startswith("template:"):
        return TemplateRegistry(spec[len("template:"):])
    if spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisRegistry(spec, ttl=cache_ttl)
    raise ValueError(f"unknown registry {spec!r}: use file:PATH, template:URL with {{id}}, or redis://HOST:PORT/DB")
