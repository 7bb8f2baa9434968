"""Warm pools (control-plane-api.md §5.2), mapped onto the backend's one warm pool.

Every sandbox here starts from the built-in default snapshot, so every warm pool is a
claim on the same runtime pool: its size is the larger of the size the main job was
started with and the sum of all warm pools (capped, so no organization can fill the
machine with idle sandboxes). `currentSize` is real: the sandboxes warm right now, shared
out to the pools in the order they were created.
"""

from __future__ import annotations

import builtins
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
from sqlalchemy import Engine, and_, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from controlplane.auth import Principal
from controlplane.errors import BadRequest, Conflict, NotFound
from controlplane.sandboxes.service import (
    DEFAULT_SNAPSHOT,
    DEFAULT_TARGET,
    DEFAULT_USER,
    DEFAULTS,
)
from controlplane.store.schema import warm_pools as table

MAX_POOL = 10  # one pool
MAX_TOTAL = 20  # all pools together


class PoolBackend(Protocol):
    def set_pool_size(self, size: int) -> None: ...

    def pool_ready(self) -> int: ...


@dataclass
class WarmPoolRecord:
    id: str
    organization_id: str
    snapshot: str
    target: str
    pool: int
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class WarmPoolView:
    record: WarmPoolRecord
    current_size: int


def _record(row: Any) -> WarmPoolRecord:
    return WarmPoolRecord(**row._mapping)


class WarmPoolService:
    def __init__(self, engine: Engine, backend: PoolBackend | None, base_size: int) -> None:
        self.engine = engine
        self.backend = backend
        self.base_size = base_size
        self._lock = anyio.Lock()

    def _all(self) -> list[WarmPoolRecord]:
        with self.engine.connect() as conn:
            return [_record(r) for r in conn.execute(select(table).order_by(table.c.created_at, table.c.id))]

    def _apply(self, pools: list[WarmPoolRecord]) -> None:
        if self.backend is not None:
            self.backend.set_pool_size(max(self.base_size, sum(p.pool for p in pools)))

    async def open(self) -> None:
        """Size the backend's pool from the stored warm pools (at start)."""
        self._apply(await anyio.to_thread.run_sync(self._all))

    def _views(self, pools: list[WarmPoolRecord], organization_id: str) -> list[WarmPoolView]:
        ready = self.backend.pool_ready() if self.backend is not None else 0
        out = []
        for pool in pools:
            share = min(pool.pool, ready)
            ready -= share
            if pool.organization_id == organization_id:
                out.append(WarmPoolView(pool, share))
        return out

    async def list(self, principal: Principal) -> list[WarmPoolView]:
        return self._views(await anyio.to_thread.run_sync(self._all), principal.organization_id)

    async def _one(self, principal: Principal, pool_id: str) -> WarmPoolView:
        for view in await self.list(principal):
            if view.record.id == pool_id:
                return view
        raise NotFound(f"Warm pool {pool_id} not found")

    def _check(self, pools: builtins.list[WarmPoolRecord], size: int, minimum: int, replacing: str | None = None) -> None:
        if not minimum <= size <= MAX_POOL:
            raise BadRequest(f"pool must be from {minimum} to {MAX_POOL}, got {size}", "INVALID_POOL")
        total = sum(p.pool for p in pools if p.id != replacing) + size
        if total > MAX_TOTAL:
            raise BadRequest(f"warm pools on this server hold at most {MAX_TOTAL} sandboxes together; this would "
                             f"make {total}", "INVALID_POOL")

    async def create(self, principal: Principal, snapshot: str, size: int, target: str | None) -> WarmPoolView:
        if snapshot not in (DEFAULT_SNAPSHOT,):
            raise NotFound(f"Snapshot {snapshot} not found: the snapshots here are: {DEFAULT_SNAPSHOT}")
        if target not in (None, "", DEFAULT_TARGET):
            raise BadRequest(f"target {target!r} does not exist here: the only target is {DEFAULT_TARGET}",
                             "INVALID_TARGET")
        now = time.time()
        record = WarmPoolRecord(str(uuid.uuid4()), principal.organization_id, snapshot, DEFAULT_TARGET, size, now, now)
        async with self._lock:
            pools = await anyio.to_thread.run_sync(self._all)
            self._check(pools, size, 1)

            def work() -> None:
                try:
                    with self.engine.begin() as conn:
                        conn.execute(insert(table).values(**record.__dict__))
                except IntegrityError:
                    raise Conflict(f"A warm pool for snapshot {snapshot} already exists", "WARM_POOL_EXISTS") from None

            await anyio.to_thread.run_sync(work)
            self._apply([*pools, record])
        return await self._one(principal, record.id)

    async def update(self, principal: Principal, pool_id: str, size: int) -> WarmPoolView:
        await self._one(principal, pool_id)
        async with self._lock:
            pools = await anyio.to_thread.run_sync(self._all)
            self._check(pools, size, 0, replacing=pool_id)

            def work() -> None:
                with self.engine.begin() as conn:
                    conn.execute(update(table).where(and_(table.c.id == pool_id,
                                                          table.c.organization_id == principal.organization_id))
                                 .values(pool=size, updated_at=time.time()))

            await anyio.to_thread.run_sync(work)
            self._apply(await anyio.to_thread.run_sync(self._all))
        return await self._one(principal, pool_id)

    async def delete(self, principal: Principal, pool_id: str) -> None:
        await self._one(principal, pool_id)
        async with self._lock:
            def work() -> None:
                with self.engine.begin() as conn:
                    conn.execute(delete(table).where(and_(table.c.id == pool_id,
                                                          table.c.organization_id == principal.organization_id)))

            await anyio.to_thread.run_sync(work)
            self._apply(await anyio.to_thread.run_sync(self._all))


def warm_pool_dto(view: WarmPoolView) -> dict[str, object]:
    from controlplane.wire import iso

    record = view.record
    return {"id": record.id, "organizationId": record.organization_id, "snapshot": record.snapshot,
            "target": record.target, "pool": record.pool, "currentSize": view.current_size, "cpu": DEFAULTS.cpu,
            "mem": DEFAULTS.memory, "disk": DEFAULTS.disk, "osUser": DEFAULT_USER, "env": {},
            "createdAt": iso(record.created_at), "updatedAt": iso(record.updated_at)}
