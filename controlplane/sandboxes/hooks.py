"""What other resources add to a sandbox's create: volumes' mounts, secrets' environment,
settings kept in `extra`. Each hook validates in `prepare` (before anything exists) and
may re-check in `confirm`, once the record is stored, to close races with a concurrent
delete of what it named; an error from either leaves nothing behind."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from controlplane.backend import Mount

if TYPE_CHECKING:
    from controlplane.auth import Principal
    from controlplane.sandboxes.dto import CreateSandbox
    from controlplane.sandboxes.records import SandboxRecord


@dataclass
class Prepared:
    volumes: list[dict[str, Any]] = field(default_factory=list)  # as recorded and returned
    mounts: list[Mount] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # injected only: never recorded or returned
    extra: dict[str, Any] = field(default_factory=dict)


class CreateHook(Protocol):
    async def prepare(self, principal: Principal, body: CreateSandbox, prepared: Prepared) -> None: ...

    async def confirm(self, principal: Principal, record: SandboxRecord) -> None: ...


@dataclass(frozen=True)
class Source:
    """The snapshot a sandbox is made of: its name (as recorded and shown), its name in the
    backend's store, and the id of the snapshot build it waits for (None: ready now)."""

    name: str
    store_name: str | None
    building: str | None = None


class SnapshotSource(Protocol):
    async def resolve(self, principal: Principal, body: CreateSandbox) -> Source:
        """The snapshot or build a create names (400 if unknown, not active, or not buildable)."""

    async def ready(self, source: Source) -> str:
        """Wait for the build; the store name, or an exception whose message says why it failed."""
