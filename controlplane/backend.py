"""The seam between the control plane and what really runs sandboxes.

Narrow on purpose: no bwrap, uids or cgroups cross it, only ids, environments and
resources in Daytona's units (CPUs, memory and disk in GiB). The local runtime
(`runtime/backend.py`) is the first implementation; a Kubernetes backend is another
implementation of the same Protocol, not a rewrite of the control plane.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from collections.abc import Callable
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class Resources:
    cpu: int = 1
    memory: int = 1  # GiB
    disk: int = 3  # GiB


@dataclass(frozen=True)
class Mount:
    """A host directory the backend binds into the sandbox (volumes)."""

    source: str
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class CreateRequest:
    sandbox_id: str
    env: dict[str, str] = field(default_factory=dict)
    resources: Resources = Resources()
    mounts: tuple[Mount, ...] = ()
    # Outbound network beyond loopback (Daytona's networkBlockAll=false); off unless asked.
    network: bool = False
    # Daytona's networkAllowList as CIDRs: egress only to these (empty: no list).
    allow_list: tuple[str, ...] = ()
    # Daytona's domainAllowList: egress also (or only) to what these resolve to.
    domain_allow_list: tuple[str, ...] = ()
    # A linked follower: its owner's id, and the names it reaches the owner by.
    link_to: str | None = None
    link_names: tuple[str, ...] = ()
    # The snapshot whose root file system the sandbox gets (a backend without its own roots
    # knows only "default").
    snapshot: str = "default"


class Existence(str, Enum):
    """What the backend knows of a sandbox (for reconcile)."""

    STARTED = "started"
    STOPPED = "stopped"
    ARCHIVED = "archived"


class BackendError(Exception):
    """The backend could not do it; `status` is the HTTP status to report."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Unsupported(BackendError):
    def __init__(self, what: str) -> None:
        super().__init__(501, f"this sandbox backend cannot {what} yet")


class SandboxBackend(Protocol):
    async def create(self, request: CreateRequest) -> None:
        """Create and start; returns once the sandbox's toolbox answers at `address()`."""

    async def start(self, sandbox_id: str) -> None:
        """Start a stopped or archived sandbox (restoring an archived one first)."""

    async def stop(self, sandbox_id: str) -> None:
        """Stop; the sandbox's files stay."""

    async def destroy(self, sandbox_id: str) -> None:
        """Stop and remove everything; idempotent (an unknown id is not an error)."""

    async def archive(self, sandbox_id: str) -> None:
        """A stopped sandbox's files packed away, its disk freed."""

    async def resize(self, sandbox_id: str, resources: Resources) -> None: ...

    async def set_network(self, sandbox_id: str, block_all: bool, allow_list: tuple[str, ...],
                          domain_allow_list: tuple[str, ...] = ()) -> None:
        """Daytona's network settings, recorded and applied at once if the sandbox runs."""

    @property
    def default_network_block_all(self) -> bool:
        """What `networkBlockAll` a create that does not say gets (Daytona: false)."""

    async def status(self) -> dict[str, Existence]:
        """Every sandbox that really exists, and whether it runs."""

    def address(self, sandbox_id: str) -> str:
        """The toolbox upstream for the proxy's registry: `unix:/path` or `http://host:port`."""

    def peer_uid(self, sandbox_id: str) -> int | None:
        """For a `unix:` address, the uid that must be listening there (the proxy checks it
        with SO_PEERCRED); None where the address itself is trusted."""

    def preview_address(self, sandbox_id: str) -> str | None:
        """The sandbox's own IPv4 address, which the proxy connects to for previews in one
        hop; None: previews go through the daemon's /proxy/{port} route."""


class BuiltImage(Protocol):
    size: int
    entrypoint: list[str] | None
    layers: tuple[str, ...]


class ImageBuilder(Protocol):
    """Optional beside a SandboxBackend (its `images` attribute): snapshots built from
    Dockerfile text, named by the control plane's own store name for them."""

    def check(self, dockerfile: str, *, has_context: bool = False) -> str | None:
        """Why the Dockerfile cannot be built here (a 400 before anything runs), or None.
        `has_context`: COPY has a build context to read from."""

    async def build(self, name: str, dockerfile: str, log: Callable[[str], None],
                    context: Path | None = None) -> BuiltImage:
        """Build it (COPY from the `context` directory), output lines to `log` as they come;
        raises an exception whose message says why it failed."""

    async def remove(self, name: str) -> None:
        """Forget the snapshot; its layers go once no existing sandbox or other snapshot
        uses them (the backend knows its sandboxes)."""
