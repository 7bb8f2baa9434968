"""What the proxy knows: the control plane rewrites the proxy's `file:` registry from the
database whenever a sandbox starts or stops routing, or a key is added or revoked.

Started sandboxes with their toolbox address (from the backend), preview token, public
flag and organization, plus every API key's hash and organization, so the proxy accepts a
key only for its own organization's sandboxes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from controlplane.auth import Keys
from controlplane.backend import SandboxBackend
from controlplane.sandboxes.records import SandboxRecords
from runtime.registry import FileRegistry

# Returns once the proxy routes the sandbox id (the proxy re-reads its file at most every 0.25 s).
VisibleCheck = Callable[[str], Awaitable[None]]
# Returns once the proxy accepts the API key (True) or refuses it (False).
KeyCheck = Callable[[str, bool], Awaitable[None]]


class ProxyView:
    def __init__(self, registry: FileRegistry, records: SandboxRecords, keys: Keys, backend: SandboxBackend,
                 visible: VisibleCheck | None = None, key_seen: KeyCheck | None = None) -> None:
        self.registry = registry
        self.records = records
        self.keys = keys
        self.backend = backend
        self.visible = visible
        self.key_seen = key_seen
        self._lock = anyio.Lock()
        # Other resources' additions to the entries (signing keys, revoked preview labels).
        self.decorators: list[Callable[[dict[str, dict[str, Any]]], None]] = []
        self._written: tuple[dict[str, dict[str, Any]], dict[str, str]] | None = None
        self._coming: set[str] = set()

    def _build(self) -> None:
        entries: dict[str, dict[str, Any]] = {}
        for sandbox_id, organization, token, public in self.records.routed(tuple(self._coming)):
            entries[sandbox_id] = {"url": self.backend.address(sandbox_id), "token": token,
                                   "public": public, "organization": organization}
            uid = self.backend.peer_uid(sandbox_id)
            if uid is not None:
                entries[sandbox_id]["uid"] = uid
            # Its own address, where the backend gives one: previews in one hop (issue 16).
            address = self.backend.preview_address(sandbox_id)
            if address is not None:
                entries[sandbox_id]["address"] = address
        for decorate in self.decorators:
            decorate(entries)
        keys = self.keys.hashes()
        if self._written == (entries, keys):
            return  # unchanged: the proxy need not re-read anything
        self.registry.replace(entries, keys)
        self._written = (entries, keys)

    async def publish(self, coming: str | None = None) -> None:
        """`coming`: a sandbox to route though not recorded started yet, until `arrived`
        (routed before anyone sees it started: SandboxService._started)."""
        async with self._lock:
            if coming is not None:
                self._coming.add(coming)
            await anyio.to_thread.run_sync(self._build)

    def arrived(self, sandbox_id: str) -> None:
        """`sandbox_id` is recorded started (or failed): its state decides from now on."""
        self._coming.discard(sandbox_id)

    async def until_routed(self, sandbox_id: str) -> None:
        if self.visible is not None:
            await self.visible(sandbox_id)

    async def until_key(self, key: str, accepted: bool) -> None:
        """After `publish()`: return once the proxy has taken a new key (or dropped a
        revoked one), so the caller's next toolbox call gets the right answer at once."""
        if self.key_seen is not None:
            await self.key_seen(key, accepted)
