"""Build steps on the runtime's sandbox network (runtime/network.py): each step gets a
slot of its own (netns, veth, address, NAT egress, the sandbox rules: no host service on
loopback or any other host address, no private range, anti-spoofing), released after it.
Slots come from `Network.allocate`, so from the blocks the runtime holds in the host-wide
record (runtime/netranges.py), as its sandboxes' do.

Without it (no root, no nftables) a step has no network at all; never the host's, where
a Dockerfile's `RUN curl http://127.0.0.1:6379/` would reach the host's own services."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from runtime.network import Network, NetworkError, Slot


class StepNetworkError(Exception):
    pass


@dataclass(frozen=True)
class StepNet:
    netns: str  # the step's network namespace (entered with nsenter)
    resolv_conf: str  # names the slot's gateway, which DNATs to the host's resolver
    note: str  # for the build log


NO_NETWORK = ("[build step without network: this runtime has no sandbox network "
              "(it needs root and nftables), and steps never get the host's]")


class StepNetworks:
    """Slots for build steps. `allocate`/`release`: the runtime's own slot bookkeeping
    (shared with its sandboxes); by default this object keeps its own."""

    def __init__(self, net: Network, *, block_all: bool = False,
                 allocate: Callable[[], Awaitable[Slot]] | None = None,
                 release: Callable[[Slot], None] | None = None) -> None:
        self.net = net
        self.block_all = block_all  # RUNTIME_NETWORK_BLOCK_ALL, as for new sandboxes
        self._own: set[int] = set()
        self._lock = asyncio.Lock()
        self._allocate = allocate or self._allocate_own
        self._release = release or (lambda slot: self._own.discard(slot.index))

    async def _allocate_own(self) -> Slot:
        async with self._lock:
            slot = await asyncio.to_thread(self.net.allocate, set(self._own))
            self._own.add(slot.index)
        return slot

    @contextlib.asynccontextmanager
    async def step(self) -> AsyncIterator[StepNet]:
        try:
            slot = await self._allocate()
        except NetworkError as exc:
            raise StepNetworkError(f"no network for the build step: {exc.message}") from None
        try:
            try:
                await asyncio.to_thread(self.net.setup, slot, self.block_all, ())
            except NetworkError as exc:
                raise StepNetworkError(f"no network for the build step: {exc.message}") from None
            note = (f"[build step network: {slot.address}, all egress blocked (RUNTIME_NETWORK_BLOCK_ALL)]"
                    if self.block_all else
                    f"[build step network: {slot.address}, NAT egress as a sandbox's (no host or private addresses)]")
            yield StepNet(slot.netns_path, self.net.resolv_conf(slot), note)
        finally:
            try:
                await asyncio.shield(asyncio.to_thread(self.net.teardown, slot))
            finally:
                self._release(slot)
