"""Snapshots (control-plane-api.md §4.1). There is one, built in: `default`, the runtime's
root filesystem that every sandbox starts from. It is `general` (shared by every
organization), always active, and cannot be deleted (403, as upstream answers for general
snapshots). Creating snapshots needs image builds, which are the next issue's job: until
then `create` is a 501 that says so, and nothing is recorded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from controlplane.errors import ApiError, BadRequest, NotFound, NotImplementedYet

# A stable UUID, so clients that cache it (and the SDK's UUID-first lookup) keep working.
from controlplane.sandboxes.service import (
    DEFAULT_SNAPSHOT,
    DEFAULT_SNAPSHOT_ID,
    DEFAULTS,
)

BUILT_AT = 1_764_547_200.0  # 2025-12-01T00:00:00Z: the built-in snapshot has no real build time
IMAGE_BUILDS = ("Building snapshots from images (snapshot.create, Image.*, CreateSandboxFromImageParams) is not "
                f"available yet on this server: create sandboxes from the built-in '{DEFAULT_SNAPSHOT}' snapshot")
MAX_LIMIT = 200


@dataclass(frozen=True)
class Snapshot:
    id: str
    name: str
    general: bool
    state: str
    image_name: str
    cpu: int
    gpu: int
    mem: int
    disk: int
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class Page:
    items: list[Snapshot]
    total: int
    page: int
    total_pages: int


class Forbidden(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(403, message, "FORBIDDEN")


DEFAULT = Snapshot(id=DEFAULT_SNAPSHOT_ID, name=DEFAULT_SNAPSHOT, general=True, state="active",
                   image_name="sandbox-toolbox/default", cpu=DEFAULTS.cpu, gpu=0, mem=DEFAULTS.memory,
                   disk=DEFAULTS.disk, created_at=BUILT_AT, updated_at=BUILT_AT)


class SnapshotService:
    def __init__(self) -> None:
        self.snapshots = (DEFAULT,)

    def list(self, *, page: int = 1, limit: int = 100, name: str | None = None,
             source_sandbox_id: str | None = None) -> Page:
        if page < 1:
            raise BadRequest(f"page must be 1 or more, got {page}", "INVALID_PAGE")
        if not 1 <= limit <= MAX_LIMIT:
            raise BadRequest(f"limit must be from 1 to {MAX_LIMIT}, got {limit}", "INVALID_LIMIT")
        # No snapshot here was taken from a sandbox, so a sourceSandboxId filter matches none.
        matching = [s for s in self.snapshots
                    if (name is None or name.lower() in s.name.lower()) and source_sandbox_id is None]
        start = (page - 1) * limit
        return Page(matching[start:start + limit], len(matching), page, max(1, math.ceil(len(matching) / limit)))

    def get(self, id_or_name: str) -> Snapshot:
        for snapshot in self.snapshots:
            if id_or_name in (snapshot.id, snapshot.name):
                return snapshot
        raise NotFound(f"Snapshot {id_or_name} not found")

    def activate(self, snapshot_id: str) -> Snapshot:
        snapshot = self.get(snapshot_id)
        if snapshot.state == "active":
            raise BadRequest(f"Snapshot {snapshot.name} is already active", "SNAPSHOT_ACTIVE")
        return snapshot

    def delete(self, snapshot_id: str) -> None:
        snapshot = self.get(snapshot_id)
        if snapshot.general:
            raise Forbidden(f"Snapshot {snapshot.name} is a built-in general snapshot and cannot be deleted")

    def create(self) -> None:
        raise NotImplementedYet(IMAGE_BUILDS, "IMAGE_BUILDS_UNAVAILABLE")
