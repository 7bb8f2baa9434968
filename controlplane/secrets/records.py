"""The `secrets` table. Values are read only by `values_for`, to inject them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, and_, delete, select, update

from controlplane.errors import Conflict
from controlplane.store.db import insert_named
from controlplane.store.schema import secrets as table


@dataclass
class SecretRecord:
    id: str
    organization_id: str
    name: str
    description: str | None
    created_at: float
    updated_at: float
    hosts: list[str] = field(default_factory=list)


_PUBLIC = [c for c in table.c if c.name != "value"]


def _record(row: Any) -> SecretRecord:
    return SecretRecord(**row._mapping)


class SecretRecords:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def insert(self, record: SecretRecord, value: str) -> None:
        insert_named(self.engine, table, {**record.__dict__, "value": value},
                     Conflict(f"Secret with name {record.name} already exists", "SECRET_NAME_TAKEN"))

    def get(self, organization_id: str, secret_id: str) -> SecretRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(*_PUBLIC).where(table.c.organization_id == organization_id,
                                                      table.c.id == secret_id)).first()
        return _record(row) if row else None

    def of_organization(self, organization_id: str) -> list[SecretRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(*_PUBLIC).where(table.c.organization_id == organization_id)).all()
        return [_record(r) for r in rows]

    def values_for(self, organization_id: str, names: list[str]) -> dict[str, tuple[str, str]]:
        """name -> (id, value) for the organization's secrets among `names`."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(table.c.name, table.c.id, table.c.value).where(
                table.c.organization_id == organization_id, table.c.name.in_(names))).all()
        return {r.name: (r.id, r.value) for r in rows}

    def change(self, organization_id: str, secret_id: str, **changes: Any) -> bool:
        with self.engine.begin() as conn:
            result = conn.execute(update(table).where(and_(
                table.c.organization_id == organization_id, table.c.id == secret_id)).values(**changes))
        return result.rowcount == 1

    def remove(self, organization_id: str, secret_id: str) -> bool:
        with self.engine.begin() as conn:
            result = conn.execute(delete(table).where(and_(
                table.c.organization_id == organization_id, table.c.id == secret_id)))
        return result.rowcount == 1
