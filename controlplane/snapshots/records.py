"""The `snapshots` table: snapshots an organization built, names unique per organization.
Blocking queries; run them in a worker thread. (The built-in `default` snapshot is not a
row: it is every organization's, see service.py.)"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from controlplane.errors import Conflict
from controlplane.store.db import find_by_id_or_name
from controlplane.store.schema import sandboxes
from controlplane.store.schema import snapshots as table

PENDING, BUILDING, ACTIVE, INACTIVE, BUILD_FAILED, ERROR = (
    "pending", "building", "active", "inactive", "build_failed", "error")
IN_PROGRESS = (PENDING, BUILDING)
# Sandbox states that do not hold a snapshot: stopped ones keep working on its layers, and
# ones still waiting on its build end build_failed when it is deleted.
NOT_RUNNING = ("stopped", "archived", "error", "build_failed", "destroyed", "pending_build", "building_snapshot")


@dataclass
class SnapshotRecord:
    id: str
    organization_id: str
    name: str
    state: str
    cpu: int
    gpu: int
    mem: int
    disk: int
    store_name: str
    created_at: float
    updated_at: float
    image_name: str | None = None
    dockerfile: str | None = None
    error_reason: str | None = None
    size: float | None = None
    entrypoint: list[str] | None = None
    last_used_at: float | None = None


_COLUMNS = [f.name for f in dataclasses.fields(SnapshotRecord)]


def _record(row: Any) -> SnapshotRecord:
    return SnapshotRecord(**{name: getattr(row, name) for name in _COLUMNS})


class SnapshotRecords:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def insert(self, record: SnapshotRecord) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(table).values(**dataclasses.asdict(record)))
        except IntegrityError:
            raise Conflict(f"Snapshot with name {record.name} already exists", "SNAPSHOT_NAME_TAKEN") from None

    def find(self, organization_id: str, id_or_name: str) -> SnapshotRecord | None:
        row = find_by_id_or_name(self.engine, table, organization_id, id_or_name)
        return _record(row) if row is not None else None

    def get(self, snapshot_id: str) -> SnapshotRecord | None:
        """Unscoped: for the build worker, which holds an id it made."""
        with self.engine.connect() as conn:
            row = conn.execute(select(table).where(table.c.id == snapshot_id)).first()
        return _record(row) if row else None

    def page(self, organization_id: str, *, offset: int, limit: int,
             name: str | None = None) -> tuple[list[SnapshotRecord], int]:
        where = [table.c.organization_id == organization_id]
        if name:
            where.append(func.lower(table.c.name).contains(name.lower(), autoescape=True))
        with self.engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()
            rows = conn.execute(select(table).where(*where).order_by(table.c.created_at.desc(), table.c.id)
                                .offset(offset).limit(limit)).all()
        return [_record(r) for r in rows], int(total)

    def in_progress(self) -> list[SnapshotRecord]:
        """Unscoped: builds a previous process left unfinished."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(table).where(table.c.state.in_(IN_PROGRESS))).all()
        return [_record(r) for r in rows]

    def store_names(self) -> set[str]:
        """Unscoped: every snapshot the store should keep."""
        with self.engine.connect() as conn:
            return {r.store_name for r in conn.execute(select(table.c.store_name)).all()}

    def set_state(self, snapshot_id: str, state: str, **values: Any) -> bool:
        with self.engine.begin() as conn:
            result = conn.execute(update(table).where(table.c.id == snapshot_id).values(state=state, updated_at=time.time(),
                                                                     **values))
        return bool(result.rowcount)

    def sandboxes_running(self, organization_id: str, name: str) -> int:
        """Sandboxes of the organization made of snapshot `name` that run or are coming up."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(sandboxes).where(
                sandboxes.c.organization_id == organization_id, sandboxes.c.snapshot == name,
                sandboxes.c.state.not_in(NOT_RUNNING))).scalar_one())

    def remove(self, snapshot_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(table).where(table.c.id == snapshot_id))
