"""Snapshots (control-plane-api.md §4): the built-in `default`, and the ones an
organization builds from an image name or from the Dockerfile text the SDK's `Image`
sends.

A create is recorded `pending` and answered at once; the build runs in the background,
owned by this service (`builds`, cancelled and recorded `build_failed` on close), and goes
`building` -> `active` or `build_failed` with an `errorReason`. A restarted control plane
finds builds a dead process left `pending`/`building` and records them `build_failed`:
nothing half-done stays. The build's output goes to its log (controlplane/snapshots/logs.py),
which the SDK follows over the URL `build-logs-url` hands out. States changes reach
Socket.IO clients as `snapshot.created` / `snapshot.state.updated` / `snapshot.removed`.

`default` is `general` (shared by every organization), always active, and cannot be
deleted (403, as upstream answers for general snapshots). Any other snapshot can, in use
or not, as upstream: deleting one being built cancels the build; its sandboxes keep its
layers until the last of them goes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from controlplane.auth import Principal
from controlplane.backend import ImageBuilder, Resources
from controlplane.errors import ApiError, BadRequest, Conflict, NotFound, NotImplementedYet
from controlplane.sandboxes.dto import CreateSandbox
from controlplane.sandboxes.hooks import Source
from controlplane.sandboxes.service import DEFAULT_SNAPSHOT, DEFAULT_SNAPSHOT_ID, DEFAULTS, _resources
from controlplane.snapshots import records as states
from controlplane.snapshots.contexts import HASH, BuildContexts
from controlplane.snapshots.logs import BuildLog, BuildLogs
from controlplane.snapshots.records import SnapshotRecord, SnapshotRecords

log = logging.getLogger("controlplane.snapshots")

BUILT_AT = 1_764_547_200.0  # 2025-12-01T00:00:00Z: the built-in snapshot has no real build time
MAX_LIMIT = 200
# Builds at once; the others wait `pending` (a build step is a sandbox's worth of CPU and memory).
MAX_CONCURRENT_BUILDS = 2
NO_BUILDER = ("Building snapshots from images is not available with this sandbox backend: create "
              f"sandboxes from the built-in '{DEFAULT_SNAPSHOT}' snapshot")
NO_CONTEXT = ("Images with local files (add_local_file, add_local_dir, pip_install_from_requirements) "
              "are not supported: this server has no S3-compatible object storage for the SDK to upload "
              "them to (docs/images.md). Use run_commands, pip_install, env, workdir instead")
MAX_CONTEXTS = 100
INTERRUPTED = "the build was interrupted: the control plane stopped while it ran; create the snapshot again"
# Names built for CreateSandboxFromImageParams: one per distinct Dockerfile, reused.
IMAGE_PREFIX = "image-"

SnapshotListener = Callable[[str, SnapshotRecord | None, str | None, str | None], Awaitable[None]]


class Forbidden(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(403, message, "FORBIDDEN")


DEFAULT = SnapshotRecord(id=DEFAULT_SNAPSHOT_ID, organization_id="", name=DEFAULT_SNAPSHOT, state=states.ACTIVE,
                         cpu=DEFAULTS.cpu, gpu=0, mem=DEFAULTS.memory, disk=DEFAULTS.disk,
                         store_name=DEFAULT_SNAPSHOT, created_at=BUILT_AT, updated_at=BUILT_AT,
                         image_name="sandbox-toolbox/default")


@dataclass(frozen=True)
class Page:
    items: list[SnapshotRecord]
    total: int
    page: int
    total_pages: int


@dataclass(frozen=True)
class NewSnapshot:
    """A create, validated by the routes' DTO: exactly one of image_name / dockerfile."""

    name: str
    image_name: str | None = None
    dockerfile: str | None = None
    entrypoint: list[str] | None = None
    context_hashes: tuple[str, ...] = ()
    cpu: int | None = None
    memory: int | None = None
    disk: int | None = None
    gpu: int | None = None


def is_general(record: SnapshotRecord) -> bool:
    return record.id == DEFAULT_SNAPSHOT_ID


def build_info(raw: dict[str, object]) -> tuple[str, tuple[str, ...]]:
    """`buildInfo` as (dockerfileContent, contextHashes), checked."""
    dockerfile = raw.get("dockerfileContent")
    hashes = raw.get("contextHashes") or []
    if not isinstance(dockerfile, str) or not dockerfile.strip():
        raise BadRequest("buildInfo.dockerfileContent must be the Dockerfile text", "INVALID_BUILD_INFO")
    if not isinstance(hashes, list) or not all(isinstance(h, str) for h in hashes):
        raise BadRequest("buildInfo.contextHashes must be a list of strings", "INVALID_BUILD_INFO")
    if len(hashes) > MAX_CONTEXTS or not all(HASH.match(h) for h in hashes):
        raise BadRequest(f"buildInfo.contextHashes must be at most {MAX_CONTEXTS} md5 hashes (32 lowercase hex "
                         "digits), as the SDK's uploads are named", "INVALID_BUILD_INFO")
    return dockerfile, tuple(hashes)


def dockerfile_of(new: NewSnapshot) -> str:
    if new.dockerfile is not None:
        return new.dockerfile
    assert new.image_name is not None
    text = f"FROM {new.image_name}\n"
    if new.entrypoint:
        text += f"ENTRYPOINT {json.dumps(new.entrypoint)}\n"
    return text


class SnapshotService:
    def __init__(self, records: SnapshotRecords, logs: BuildLogs, images: ImageBuilder | None,
                 contexts: BuildContexts | None = None) -> None:
        self.records = records
        self.logs = logs
        self.images = images
        self.contexts = contexts  # the SDK's uploads (None: no object storage)
        self.builds: dict[str, asyncio.Task[None]] = {}
        self.deleting: set[str] = set()  # builds cancelled because their snapshot is deleted
        self.slots = asyncio.Semaphore(MAX_CONCURRENT_BUILDS)
        self.listeners: list[SnapshotListener] = []

    # -- lifecycle ------------------------------------------------------------------------
    async def open(self) -> None:
        for record in await anyio.to_thread.run_sync(self.records.in_progress):
            await self._set(record, states.BUILD_FAILED, error_reason=INTERRUPTED)
            log.warning("snapshot %s (%s): an interrupted build is now build_failed", record.name, record.id)

    async def close(self) -> None:
        tasks = list(self.builds.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _set(self, record: SnapshotRecord, state: str, **values: Any) -> SnapshotRecord:
        old = record.state
        await anyio.to_thread.run_sync(lambda: self.records.set_state(record.id, state, **values))
        fresh = await anyio.to_thread.run_sync(self.records.get, record.id) or record
        await self._emit("snapshot.state.updated", fresh, old, state)
        return fresh

    async def _emit(self, event: str, record: SnapshotRecord | None, old: str | None, new: str | None) -> None:
        for listener in self.listeners:
            try:
                await listener(event, record, old, new)
            except Exception:  # noqa: BLE001 -- an event is best-effort, the state is recorded
                log.exception("snapshot event %s failed", event)

    # -- reads ----------------------------------------------------------------------------
    async def list(self, principal: Principal, *, page: int = 1, limit: int = 100, name: str | None = None,
                   source_sandbox_id: str | None = None) -> Page:
        if page < 1:
            raise BadRequest(f"page must be 1 or more, got {page}", "INVALID_PAGE")
        if not 1 <= limit <= MAX_LIMIT:
            raise BadRequest(f"limit must be from 1 to {MAX_LIMIT}, got {limit}", "INVALID_LIMIT")
        if source_sandbox_id is not None:  # no snapshot here was taken from a sandbox
            return Page([], 0, page, 1)
        general = [DEFAULT] if name is None or name.lower() in DEFAULT.name else []
        offset = (page - 1) * limit
        own_offset = max(0, offset - len(general))
        own, own_total = await anyio.to_thread.run_sync(lambda: self.records.page(
            principal.organization_id, offset=own_offset, limit=limit, name=name))
        items = (general[offset:] + own)[:limit]
        total = len(general) + own_total
        return Page(items, total, page, max(1, math.ceil(total / limit)))

    async def get(self, principal: Principal, id_or_name: str) -> SnapshotRecord:
        if id_or_name in (DEFAULT.id, DEFAULT.name):
            return DEFAULT
        record = await anyio.to_thread.run_sync(self.records.find, principal.organization_id, id_or_name)
        if record is None:
            raise NotFound(f"Snapshot {id_or_name} not found")
        return record

    async def usable(self, principal: Principal, id_or_name: str) -> SnapshotRecord:
        """The snapshot a sandbox is to be created from (400 unless it is active)."""
        try:
            record = await self.get(principal, id_or_name)
        except NotFound:
            raise BadRequest(f"Snapshot {id_or_name} not found", "SNAPSHOT_NOT_FOUND") from None
        if record.state != states.ACTIVE:
            raise BadRequest(f"Snapshot {record.name} is {record.state}: sandboxes are created from active "
                             "snapshots only", "SNAPSHOT_NOT_ACTIVE")
        if not is_general(record):
            now = time.time()
            await anyio.to_thread.run_sync(lambda: self.records.set_state(record.id, record.state, last_used_at=now))
        return record

    # -- changes --------------------------------------------------------------------------
    async def activate(self, principal: Principal, snapshot_id: str) -> SnapshotRecord:
        record = await self.get(principal, snapshot_id)
        if record.state == states.ACTIVE:
            raise BadRequest(f"Snapshot {record.name} is already active", "SNAPSHOT_ACTIVE")
        if record.state != states.INACTIVE:
            raise BadRequest(f"Snapshot {record.name} is {record.state}; only an inactive snapshot can be "
                             "activated", "SNAPSHOT_NOT_INACTIVE")
        return await self._set(record, states.ACTIVE)

    async def delete(self, principal: Principal, snapshot_id: str) -> None:
        """A snapshot a running sandbox uses is refused (409); stopped and archived sandboxes
        of it keep working on its layers, which go when their last user does
        (docs/images.md). A build in progress is cancelled first, so nothing of it stays."""
        record = await self.get(principal, snapshot_id)
        if is_general(record):
            raise Forbidden(f"Snapshot {record.name} is a built-in general snapshot and cannot be deleted")
        if await anyio.to_thread.run_sync(self.records.sandboxes_running, principal.organization_id, record.name):
            raise Conflict(f"Snapshot {record.name} is in use by a running sandbox: stop or delete its sandboxes "
                           "first (stopped ones keep working after the snapshot is deleted)", "SNAPSHOT_IN_USE")
        # The record first: whoever waits on the build then finds the snapshot gone.
        await anyio.to_thread.run_sync(self.records.remove, record.id)
        task = self.builds.get(record.id)
        if task is not None:
            self.deleting.add(record.id)
            task.cancel()
            await asyncio.wait([task])
            self.deleting.discard(record.id)
        await anyio.to_thread.run_sync(self.logs.remove, record.id)
        if self.images is not None:
            await self.images.remove(record.store_name)
        await self._emit("snapshot.removed", record, record.state, None)

    def _check_build(self, dockerfile: str, context_hashes: tuple[str, ...]) -> ImageBuilder:
        if self.images is None:
            raise NotImplementedYet(NO_BUILDER, "IMAGE_BUILDS_UNAVAILABLE")
        if context_hashes and self.contexts is None:
            raise BadRequest(NO_CONTEXT, "BUILD_CONTEXT_UNAVAILABLE")
        why = self.images.check(dockerfile, has_context=bool(context_hashes))
        if why is not None:
            raise BadRequest(why, "INVALID_DOCKERFILE")
        return self.images

    async def create(self, principal: Principal, new: NewSnapshot) -> SnapshotRecord:
        if new.gpu:
            raise BadRequest("GPUs are not available on this server", "GPU_UNAVAILABLE")
        if new.name in (DEFAULT.name, DEFAULT.id):
            raise Conflict(f"Snapshot with name {new.name} already exists", "SNAPSHOT_NAME_TAKEN")
        if not 0 < len(new.name) <= 200 or not new.name.isprintable() or new.name.strip() != new.name:
            raise BadRequest(f"invalid snapshot name {new.name!r}: 1 to 200 printable characters, no leading or "
                             "trailing space", "INVALID_NAME")
        resources = _resources(new.cpu, new.memory, new.disk)
        dockerfile = dockerfile_of(new)
        self._check_build(dockerfile, new.context_hashes)
        return await self._start(principal, new.name, dockerfile, new.image_name, resources, new.context_hashes)

    async def _start(self, principal: Principal, name: str, dockerfile: str, image_name: str | None,
                     resources: Resources, context_hashes: tuple[str, ...] = ()) -> SnapshotRecord:
        now = time.time()
        snapshot_id = str(uuid.uuid4())
        record = SnapshotRecord(id=snapshot_id, organization_id=principal.organization_id, name=name,
                                state=states.PENDING, cpu=resources.cpu, gpu=0, mem=resources.memory,
                                disk=resources.disk, store_name=snapshot_id, created_at=now, updated_at=now,
                                image_name=image_name, dockerfile=dockerfile)
        await anyio.to_thread.run_sync(self.records.insert, record)
        # The log exists from the start, so a follower that comes before the build does waits.
        build_log = self.logs.open(record.id)
        await self._emit("snapshot.created", record, None, states.PENDING)
        # The hashes live with the build (a restart fails the build anyway: INTERRUPTED).
        self.builds[record.id] = asyncio.ensure_future(self._build(record, build_log, context_hashes))
        return record

    async def for_image(self, principal: Principal, dockerfile: str,
                        context_hashes: tuple[str, ...]) -> SnapshotRecord:
        """The snapshot a sandbox from `buildInfo` is made of: built once per distinct
        Dockerfile of the organization (named image-<hash>), reused while it is not failed."""
        self._check_build(dockerfile, context_hashes)
        # The files are part of the image: the same Dockerfile with other uploads is another one.
        identity = dockerfile + "".join(f"\0{h}" for h in context_hashes)
        name = IMAGE_PREFIX + hashlib.sha256(identity.encode()).hexdigest()[:24]
        existing = await anyio.to_thread.run_sync(self.records.find, principal.organization_id, name)
        if existing is not None and existing.state in (*states.IN_PROGRESS, states.ACTIVE):
            return existing
        if existing is not None:  # a failed build of it: try again
            await anyio.to_thread.run_sync(self.records.remove, existing.id)
            await anyio.to_thread.run_sync(self.logs.remove, existing.id)
        try:
            return await self._start(principal, name, dockerfile, None, DEFAULTS, context_hashes)
        except Conflict:  # another create of the same image won the race
            found = await anyio.to_thread.run_sync(self.records.find, principal.organization_id, name)
            if found is None:
                raise
            return found

    # -- the snapshot of a sandbox create (controlplane.sandboxes.hooks.SnapshotSource) ----
    async def resolve(self, principal: Principal, body: CreateSandbox) -> Source:
        if body.buildInfo is not None:
            dockerfile, hashes = build_info(body.buildInfo)
            record = await self.for_image(principal, dockerfile, hashes)
            building = None if record.state == states.ACTIVE else record.id
            return Source(record.name, record.store_name, building)
        if body.snapshot in (None, "", DEFAULT.name, DEFAULT.id):
            return Source(DEFAULT_SNAPSHOT, None)
        assert body.snapshot is not None
        record = await self.usable(principal, body.snapshot)
        return Source(record.name, None if is_general(record) else record.store_name)

    async def ready(self, source: Source) -> str:
        assert source.building is not None
        final = await self.wait(source.building)
        if final is None:
            raise LookupError("the snapshot was deleted while it was being built")
        if final.state != states.ACTIVE:
            raise RuntimeError(final.error_reason or f"the snapshot build ended {final.state}")
        return final.store_name

    async def wait(self, snapshot_id: str) -> SnapshotRecord | None:
        """Until the snapshot's build has ended: the record as it ended (None: deleted)."""
        task = self.builds.get(snapshot_id)
        if task is not None:
            await asyncio.wait([task])  # however it ends, cancelled included: never raises
        return await anyio.to_thread.run_sync(self.records.get, snapshot_id)

    def _context(self, record: SnapshotRecord, hashes: tuple[str, ...],
                 log: Callable[[str], None]) -> AbstractAsyncContextManager[Path | None]:
        if not hashes:
            return nullcontext(None)
        assert self.contexts is not None  # _check_build refused hashes without it
        return self.contexts.prepared(record.organization_id, hashes, log)

    async def _build(self, record: SnapshotRecord, build_log: BuildLog, context_hashes: tuple[str, ...] = ()) -> None:
        assert self.images is not None
        started = time.monotonic()
        try:
            async with self.slots:
                record = await self._set(record, states.BUILDING)
                async with self._context(record, context_hashes, build_log.line) as context:
                    built = await self.images.build(record.store_name, record.dockerfile or "", build_log.line,
                                                    context=context)
        except asyncio.CancelledError:
            if record.id in self.deleting:  # its record and log go with it
                raise
            with anyio.CancelScope(shield=True):
                build_log.last(f"Build cancelled: {INTERRUPTED}")
                await self._set(record, states.BUILD_FAILED, error_reason=INTERRUPTED)
            raise
        except Exception as exc:  # noqa: BLE001 -- any failure is the build's outcome, recorded
            reason = str(exc) or type(exc).__name__
            build_log.last(f"Build failed: {reason}")
            await self._set(record, states.BUILD_FAILED, error_reason=reason)
        else:
            build_log.last(f"Snapshot {record.name} is active ({built.size / 1e6:.1f} MB, "
                           f"built in {time.monotonic() - started:.1f} s)")
            await self._set(record, states.ACTIVE, size=float(built.size), entrypoint=built.entrypoint,
                            error_reason=None)
        finally:
            build_log.close()
            self.builds.pop(record.id, None)
