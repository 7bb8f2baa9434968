"""Make the records and the backend agree (at start, and periodically).

- A record still being created (the main job died mid-create): whatever the backend made
  is destroyed and the record removed, so no orphan and no ghost remain.
- A record left pending by a crash: its state becomes what the backend really has.
- A sandbox that was started when the main job died (SIGKILL, OOM killer, power loss) is
  recorded stopped and queued in `plane.interrupted`, which the main job starts again once
  the proxy is up (`ControlPlane.restart_interrupted`).
- A record whose sandbox is gone from the backend: `error` with a reason (destroyed-ness
  is never assumed; the user decides).
- A sandbox the backend has without a record (made before the control plane existed, or
  by a runtime whose database was lost): adopted into the default organization, stopped.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import TYPE_CHECKING

import anyio

from controlplane.backend import Existence
from controlplane.sandboxes.records import SandboxRecord
from controlplane.sandboxes.states import State

if TYPE_CHECKING:
    from controlplane.plane import ControlPlane

log = logging.getLogger("controlplane.reconcile")


async def _settle(plane: ControlPlane, record: SandboxRecord, state: str, reason: str | None = None) -> bool:
    return await anyio.to_thread.run_sync(plane.records.settle, record.id, record.updated_at, state, reason)


async def reconcile(plane: ControlPlane, *, at_start: bool = True) -> list[str]:
    """Returns a line per change made, for logs and tests.

    After start (`at_start=False`) only settled records are compared, never one that a
    request is changing right now, and nothing is adopted (a create in flight has its
    backend sandbox before its record is final)."""
    from controlplane.sandboxes import service as sandbox_service

    changes: list[str] = []
    records = {r.id: r for r in await anyio.to_thread.run_sync(plane.records.all)}
    existing = await plane.backend.status()
    for record in records.values():
        have = existing.get(record.id)
        if record.state in (State.PENDING_BUILD, State.BUILDING_SNAPSHOT):
            # Its build belonged to a process that is gone (the snapshot's record says so too).
            if at_start and await _settle(plane, record, State.BUILD_FAILED.value,
                                          "the control plane restarted during the image build"):
                changes.append(f"{record.id}: its image build was interrupted, now build_failed")
            continue
        if record.state == State.BUILD_FAILED:
            continue  # nothing was ever made in the backend
        if not at_start and (record.pending or record.state == State.UNKNOWN):
            continue
        if record.state == State.UNKNOWN:
            # Always: a create cut short may have left something the backend does not list
            # yet (a directory without its metadata); destroy is idempotent.
            await plane.backend.destroy(record.id)
            await anyio.to_thread.run_sync(plane.records.remove, record.id)
            changes.append(f"{record.id}: removed an unfinished create")
            continue
        if have is None:
            if ((record.state != State.ERROR or record.pending)
                    and await _settle(plane, record, State.ERROR.value, "the sandbox is gone from the backend")):
                changes.append(f"{record.id}: gone from the backend, now error")
            continue
        if record.pending and record.desired_state == State.DESTROYED:
            await plane.backend.destroy(record.id)
            await anyio.to_thread.run_sync(plane.records.remove, record.id)
            changes.append(f"{record.id}: finished an interrupted delete")
            continue
        if (at_start and not record.pending and record.state == State.STARTED
                and have == Existence.STOPPED):
            plane.interrupted.append((record.organization_id, record.id))
        if (record.pending or record.state != have.value) and await _settle(plane, record, have.value):
            changes.append(f"{record.id}: {record.state} -> {have.value}")
    for sandbox_id, have in existing.items():
        if sandbox_id in records or not at_start:
            continue
        now = time.time()
        adopted = SandboxRecord(
            id=sandbox_id, organization_id=plane.default_organization, name=sandbox_id,
            state=have.value if have != Existence.STARTED else State.STARTED.value,
            desired_state=have.value, pending=False, os_user=sandbox_service.DEFAULT_USER, env={},
            labels={sandbox_service.LANGUAGE_LABEL: "python"}, public=False, target=sandbox_service.DEFAULT_TARGET,
            cpu=1, gpu=0, memory=1, disk=3, auto_stop_interval=sandbox_service.DEFAULT_AUTO_STOP,
            auto_archive_interval=sandbox_service.DEFAULT_AUTO_ARCHIVE,
            auto_delete_interval=sandbox_service.DEFAULT_AUTO_DELETE, network_block_all=False,
            preview_token=secrets.token_urlsafe(24), created_at=now, updated_at=now, last_activity_at=now,
            snapshot=sandbox_service.DEFAULT_SNAPSHOT, extra={"adopted": True},
        )
        await anyio.to_thread.run_sync(plane.records.insert, adopted)
        changes.append(f"{sandbox_id}: adopted into the default organization")
    for line in changes:
        log.warning("reconcile: %s", line)
    return changes
