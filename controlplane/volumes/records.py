"""The `volumes` table: one row per volume, names unique per organization."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, and_, delete, select, update

from controlplane.errors import BadRequest
from controlplane.store.db import find_by_id_or_name, insert_named
from controlplane.store.schema import volumes as table

READY = "ready"
PENDING_DELETE = "pending_delete"


@dataclass
class VolumeRecord:
    id: str
    organization_id: str
    name: str
    state: str
    created_at: float
    updated_at: float
    last_used_at: float | None = None


def _record(row: Any) -> VolumeRecord:
    return VolumeRecord(**row._mapping)


class VolumeRecords:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def insert(self, record: VolumeRecord) -> None:
        # Daytona answers a taken name with a 400 (volume.service.ts).
        insert_named(self.engine, table, record.__dict__,
                     BadRequest(f"Volume with name {record.name} already exists", "VOLUME_NAME_TAKEN"))

    def find(self, organization_id: str, id_or_name: str) -> VolumeRecord | None:
        row = find_by_id_or_name(self.engine, table, organization_id, id_or_name)
        return _record(row) if row is not None else None

    def by_name(self, organization_id: str, name: str) -> VolumeRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(table).where(table.c.organization_id == organization_id,
                                                   table.c.name == name)).first()
        return _record(row) if row else None

    def of_organization(self, organization_id: str) -> list[VolumeRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(table).where(table.c.organization_id == organization_id)
                                .order_by(table.c.created_at, table.c.id)).all()
        return [_record(r) for r in rows]

    def set_state(self, volume_id: str, state: str, *, only_from: str) -> bool:
        with self.engine.begin() as conn:
            result = conn.execute(update(table).where(and_(table.c.id == volume_id, table.c.state == only_from))
                                  .values(state=state, updated_at=time.time()))
        return result.rowcount == 1

    def used(self, volume_ids: list[str]) -> None:
        if not volume_ids:
            return
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(update(table).where(table.c.id.in_(volume_ids)).values(last_used_at=now))

    def remove(self, volume_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(table).where(table.c.id == volume_id))

    def all_ids(self) -> set[str]:
        """Every volume of every organization (for the sweep at start only)."""
        with self.engine.connect() as conn:
            return {r.id for r in conn.execute(select(table.c.id))}

    def pending_deletes(self) -> list[VolumeRecord]:
        with self.engine.connect() as conn:
            return [_record(r) for r in conn.execute(select(table).where(table.c.state == PENDING_DELETE))]
