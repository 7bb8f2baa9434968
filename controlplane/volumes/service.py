"""Volumes: create (ready at once, as the SDK does not wait), list, get, delete (409 while a
sandbox uses it), and the sandbox create hook that turns `volumes` into mounts.

Races between a delete and a create that names the volume are closed in this order: the
delete marks the volume `pending_delete` before it looks for sandboxes using it, and the
create re-checks that its volumes are still `ready` after its record (which names them)
is stored. Whichever comes second sees the other.
"""

from __future__ import annotations

import builtins
import time
import uuid

import anyio
from sqlalchemy import select

from controlplane.auth import Principal
from controlplane.backend import Mount
from controlplane.errors import BadRequest, Conflict, NotFound
from controlplane.sandboxes.dto import CreateSandbox
from controlplane.sandboxes.hooks import Prepared
from controlplane.sandboxes.records import SandboxRecord, SandboxRecords
from controlplane.sandboxes.states import State
from controlplane.store.schema import sandboxes
from controlplane.volumes.records import (
    PENDING_DELETE,
    READY,
    VolumeRecord,
    VolumeRecords,
)
from controlplane.volumes.storage import MountError, VolumeStorage
from runtime.volumes import validate_subpath, validate_target

MAX_NAME = 255


def _check_name(name: str) -> None:
    if not name or len(name) > MAX_NAME or "/" in name or "\0" in name or name.strip() != name:
        raise BadRequest(f"invalid volume name {name!r}: 1 to {MAX_NAME} characters, no '/', no surrounding "
                         "spaces", "INVALID_VOLUME_NAME")


class VolumeService:
    def __init__(self, records: VolumeRecords, sandboxes: SandboxRecords, storage: VolumeStorage) -> None:
        self.records = records
        self.sandboxes = sandboxes
        self.storage = storage

    async def list(self, principal: Principal) -> list[VolumeRecord]:
        return await anyio.to_thread.run_sync(self.records.of_organization, principal.organization_id)

    async def get(self, principal: Principal, id_or_name: str) -> VolumeRecord:
        found = await anyio.to_thread.run_sync(self.records.find, principal.organization_id, id_or_name)
        if found is None:
            raise NotFound(f"Volume {id_or_name} not found")
        return found

    async def by_name(self, principal: Principal, name: str) -> VolumeRecord:
        found = await anyio.to_thread.run_sync(self.records.by_name, principal.organization_id, name)
        if found is None:
            raise NotFound(f"Volume with name {name} not found")
        return found

    async def create(self, principal: Principal, name: str) -> VolumeRecord:
        _check_name(name)
        now = time.time()
        record = VolumeRecord(id=str(uuid.uuid4()), organization_id=principal.organization_id, name=name,
                              state=READY, created_at=now, updated_at=now)

        def work() -> None:
            try:
                self.storage.create(record.id)
            except MountError as exc:
                raise BadRequest(f"could not create the volume's directory: {exc}", "VOLUME_STORAGE") from None
            try:
                self.records.insert(record)
            except BaseException:
                self.storage.delete(record.id)  # nothing half-made: no directory without a row
                raise

        await anyio.to_thread.run_sync(work)
        return record

    def _users(self, organization_id: str, volume_id: str) -> builtins.list[str]:
        """The organization's sandboxes (any state but destroyed) that mount the volume."""
        query = select(sandboxes.c.id, sandboxes.c.state, sandboxes.c.volumes).where(
            sandboxes.c.organization_id == organization_id)
        with self.sandboxes.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [r.id for r in rows
                if r.state != State.DESTROYED.value and any(v.get("volumeId") == volume_id for v in r.volumes or [])]

    async def delete(self, principal: Principal, volume_id: str) -> None:
        record = await self.get(principal, volume_id)
        if record.id != volume_id:  # Daytona deletes by id only
            raise NotFound(f"Volume {volume_id} not found")

        def work() -> None:
            if not self.records.set_state(record.id, PENDING_DELETE, only_from=READY):
                raise Conflict(f"Volume {record.name} is already being deleted", "VOLUME_BUSY")
            users = self._users(principal.organization_id, record.id)
            if users:
                self.records.set_state(record.id, READY, only_from=PENDING_DELETE)
                raise Conflict(f"Volume {record.name} is in use by sandbox(es) {', '.join(users)}: delete them "
                               "first", "VOLUME_IN_USE")
            self.storage.delete(record.id)
            self.records.remove(record.id)

        await anyio.to_thread.run_sync(work)

    async def sweep(self) -> builtins.list[str]:
        """At start: settle what a crash left: volume directories without a row (between
        making the directory and storing the row) go; returns their ids."""
        def work() -> builtins.list[str]:
            # A delete interrupted after marking the volume: finish it if its files are
            # already gone, else the volume is ready again (the delete can be retried).
            for pending in self.records.pending_deletes():
                if self.storage.path(pending.id).is_dir():
                    self.records.set_state(pending.id, READY, only_from=PENDING_DELETE)
                else:
                    self.records.remove(pending.id)
            orphans = sorted(self.storage.ids() - self.records.all_ids())
            for volume_id in orphans:
                self.storage.delete(volume_id)
            return orphans

        return await anyio.to_thread.run_sync(work)

    # -- the sandbox create hook ----------------------------------------------------------
    async def prepare(self, principal: Principal, body: CreateSandbox, prepared: Prepared) -> None:
        seen: set[str] = set()
        for wanted in body.volumes:
            try:
                target = validate_target(wanted.mountPath)
                subpath = validate_subpath(wanted.subpath or "")
            except MountError as exc:
                raise BadRequest(f"invalid volume mount: {exc}", "INVALID_MOUNT_PATH") from None
            if target in seen:
                raise BadRequest(f"two volumes are mounted at {target}", "INVALID_MOUNT_PATH")
            seen.add(target)
            volume = await self.get(principal, wanted.volumeId)
            if volume.state != READY:
                raise BadRequest(f"Volume '{volume.name}' is not in a ready state", "VOLUME_NOT_READY")
            try:
                source = await anyio.to_thread.run_sync(self.storage.source, volume.id, subpath)
            except MountError as exc:
                raise BadRequest(f"volume {volume.name}: subpath {subpath!r} cannot be used: {exc}",
                                 "INVALID_MOUNT_PATH") from None
            prepared.mounts.append(Mount(source=str(source), target=target))
            entry: dict[str, object] = {"volumeId": volume.id, "mountPath": target}
            if wanted.subpath:
                entry["subpath"] = wanted.subpath
            prepared.volumes.append(entry)

    async def confirm(self, principal: Principal, record: SandboxRecord) -> None:
        ids = [str(v["volumeId"]) for v in record.volumes]
        for volume_id in ids:
            found = await anyio.to_thread.run_sync(self.records.find, principal.organization_id, volume_id)
            if found is None or found.state != READY:
                raise Conflict(f"Volume {volume_id} was deleted while the sandbox was being created",
                               "VOLUME_GONE")
        await anyio.to_thread.run_sync(self.records.used, ids)
