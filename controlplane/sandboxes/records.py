"""Sandbox rows: blocking queries, every one scoped by organization (except the ones
reconcile and the proxy view use, which say so). Run them in a worker thread."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, and_, delete, or_, select, update

from controlplane.errors import Conflict
from controlplane.store.db import find_by_id_or_name, insert_named
from controlplane.store.schema import sandboxes as table


@dataclass
class SandboxRecord:
    id: str
    organization_id: str
    name: str
    state: str
    desired_state: str
    pending: bool
    os_user: str
    env: dict[str, str]
    labels: dict[str, str]
    public: bool
    target: str
    cpu: int
    gpu: int
    memory: int
    disk: int
    auto_stop_interval: int
    auto_archive_interval: int
    auto_delete_interval: int
    network_block_all: bool
    preview_token: str
    created_at: float
    updated_at: float
    volumes: list[dict[str, Any]] = field(default_factory=list)
    snapshot: str | None = None
    error_reason: str | None = None
    network_allow_list: str | None = None
    domain_allow_list: str | None = None
    linked_sandbox_id: str | None = None
    last_activity_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def values(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_COLUMNS = [f.name for f in dataclasses.fields(SandboxRecord)]
# What a list item shows: everything but the JSON a listing never returns.
_LISTED = [c for c in table.c if c.name not in ("env", "extra", "volumes")]


def _record(row: Any) -> SandboxRecord:
    return SandboxRecord(**{name: getattr(row, name) for name in _COLUMNS})


def _listed(row: Any) -> SandboxRecord:
    return SandboxRecord(**{c.name: getattr(row, c.name) for c in _LISTED}, env={})


# Told about every write, with the row as it now is (or was, when `removed`): the one
# place state changes, which the Socket.IO events (controlplane/events.py) hang on.
RecordListener = Callable[[SandboxRecord, bool], None]


class SandboxRecords:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.listeners: list[RecordListener] = []

    def _changed(self, sandbox_id: str) -> None:
        if not self.listeners:
            return
        record = self.by_id(sandbox_id)
        if record is not None:
            for listener in self.listeners:
                listener(record, False)

    def by_id(self, sandbox_id: str) -> SandboxRecord | None:
        """Across organizations: for listeners only, never for a request."""
        with self.engine.connect() as conn:
            row = conn.execute(select(table).where(table.c.id == sandbox_id)).first()
        return None if row is None else _record(row)

    def insert(self, record: SandboxRecord) -> None:
        insert_named(self.engine, table, record.values(),
                     Conflict(f"Sandbox with name {record.name} already exists", "NAME_TAKEN"))
        for listener in self.listeners:
            listener(record, False)

    def find(self, organization_id: str, id_or_name: str) -> SandboxRecord | None:
        """By id first, then by name, as Daytona's API looks sandboxes up."""
        row = find_by_id_or_name(self.engine, table, organization_id, id_or_name)
        return _record(row) if row is not None else None

    def followers(self, organization_id: str, owner_id: str) -> list[str]:
        """The ids of the sandboxes linked to `owner_id`."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(table.c.id).where(
                table.c.organization_id == organization_id, table.c.linked_sandbox_id == owner_id)).all()
        return [row.id for row in rows]

    def page(self, organization_id: str, *, limit: int, before: tuple[float, str] | None = None,
             labels: dict[str, str] | None = None, states: list[str] | None = None) -> list[SandboxRecord]:
        """Newest first, at most `limit` rows older than the cursor `before` (created_at, id);
        every label pair must match; `states` are stored states. Rows carry no env, extra
        or volumes (a list item shows none of them)."""
        query = select(*_LISTED).where(table.c.organization_id == organization_id)
        if before is not None:
            created_at, sandbox_id = before
            query = query.where(or_(table.c.created_at < created_at,
                                    and_(table.c.created_at == created_at, table.c.id < sandbox_id)))
        for key, value in (labels or {}).items():
            query = query.where(table.c.labels[key].as_string() == value)
        if states:
            query = query.where(table.c.state.in_(states))
        query = query.order_by(table.c.created_at.desc(), table.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [_listed(r) for r in conn.execute(query)]

    def begin(self, organization_id: str, sandbox_id: str, desired: str, allowed: list[str]) -> bool:
        """Atomically mark a change in progress; False if another request got there first
        or the state moved (the caller re-reads and reports why)."""
        with self.engine.begin() as conn:
            result = conn.execute(update(table).where(and_(
                table.c.id == sandbox_id, table.c.organization_id == organization_id,
                table.c.pending.is_(False), table.c.state.in_(allowed),
            )).values(pending=True, desired_state=desired, updated_at=time.time()))
        if result.rowcount == 1:
            self._changed(sandbox_id)
        return result.rowcount == 1

    def finish(self, sandbox_id: str, state: str, error_reason: str | None = None, **changes: Any) -> None:
        """End a change: the new state, wanted as it is now."""
        with self.engine.begin() as conn:
            conn.execute(update(table).where(table.c.id == sandbox_id).values(
                state=state, desired_state=state if state != "error" else "started", pending=False,
                error_reason=error_reason, updated_at=time.time(), **changes))
        self._changed(sandbox_id)

    def settle(self, sandbox_id: str, seen_updated_at: float, state: str, error_reason: str | None = None) -> bool:
        """`finish`, but only if nobody changed the row since it was read at `seen_updated_at`."""
        with self.engine.begin() as conn:
            result = conn.execute(update(table).where(and_(
                table.c.id == sandbox_id, table.c.updated_at == seen_updated_at,
            )).values(state=state, desired_state=state if state != "error" else "started", pending=False,
                      error_reason=error_reason, updated_at=time.time()))
        if result.rowcount == 1:
            self._changed(sandbox_id)
        return result.rowcount == 1

    def change(self, organization_id: str, sandbox_id: str, **changes: Any) -> bool:
        with self.engine.begin() as conn:
            result = conn.execute(update(table).where(and_(
                table.c.id == sandbox_id, table.c.organization_id == organization_id,
            )).values(updated_at=time.time(), **changes))
        if result.rowcount == 1 and "state" in changes:
            self._changed(sandbox_id)
        return result.rowcount == 1

    def remove(self, sandbox_id: str) -> None:
        before = self.by_id(sandbox_id) if self.listeners else None
        with self.engine.begin() as conn:
            conn.execute(delete(table).where(table.c.id == sandbox_id))
        if before is not None:
            for listener in self.listeners:
                listener(before, True)

    # -- across organizations: reconcile and the proxy's view only ----------------------
    def all(self) -> list[SandboxRecord]:
        with self.engine.connect() as conn:
            return [_record(r) for r in conn.execute(select(table))]

    def routed(self, also: tuple[str, ...] = ()) -> list[tuple[str, str, str, bool]]:
        """(id, organization, preview token, public) of every sandbox the proxy should route:
        the started ones, and `also` (up, about to be recorded started)."""
        started = and_(table.c.state == "started", table.c.desired_state.in_(["started", "resized"]))
        with self.engine.connect() as conn:
            rows = conn.execute(select(table.c.id, table.c.organization_id, table.c.preview_token,
                                       table.c.public).where(or_(started, table.c.id.in_(list(also)))))
            return [(r.id, r.organization_id, r.preview_token, bool(r.public)) for r in rows]
