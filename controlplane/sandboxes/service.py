"""Sandbox lifecycle: validation, the state machine and the backend, no HTTP.

Changes run synchronously (create and start answer `started`, the SDK's fast path, §2.3)
but are recorded as pending first, so a concurrent conflicting request is a 409 and a
crash in the middle leaves a record that reconcile can finish or undo. The backend work
itself is shielded from cancellation: a client that hangs up does not leave it half-done.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio

from controlplane.auth import Principal
from controlplane.backend import BackendError, CreateRequest, Resources, SandboxBackend
from controlplane.errors import ApiError, BadRequest, NotFound, NotImplementedYet
from controlplane.proxyview import ProxyView
from controlplane.sandboxes import states
from controlplane.sandboxes.dto import CreateSandbox
from controlplane.sandboxes.hooks import CreateHook, Prepared, SnapshotSource, Source
from controlplane.sandboxes.records import SandboxRecord, SandboxRecords
from controlplane.sandboxes.states import State
from runtime.dns import DnsError, parse_domain_list
from runtime.network import NetworkError, parse_allow_list
from runtime.sandbox import new_id
from toolbox.tasks import BackgroundTask, Spawn

log = logging.getLogger("controlplane.sandboxes")

T = TypeVar("T")

DEFAULT_SNAPSHOT = "default"
# Its id in GET /snapshots (controlplane/snapshots/service.py): a client may name it by id.
DEFAULT_SNAPSHOT_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "sandbox-toolbox:snapshot:default"))
DEFAULT_USER = "daytona"
DEFAULT_TARGET = "local"
LANGUAGE_LABEL = "code-toolbox-language"
LANGUAGES = ("python", "typescript", "javascript")
DEFAULT_AUTO_STOP = 15  # minutes, Daytona's defaults
DEFAULT_AUTO_ARCHIVE = 7 * 24 * 60
DEFAULT_AUTO_DELETE = -1
MAX_AUTO_ARCHIVE = 30 * 24 * 60
LIMITS = {"cpu": (1, 256), "memory": (1, 1024), "disk": (1, 1024)}
DEFAULTS = Resources()
# States a record stores and reports as they are when settled.
STORED_STATES = frozenset({"started", "stopped", "archived", "error"})
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
# States a record stores and reports as they are when settled.
STORED_STATES = frozenset({"started", "stopped", "archived", "error"})
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class ListPage:
    items: list[SandboxRecord]
    next_cursor: str | None


async def _shielded(fn: Callable[[], Awaitable[T]]) -> T:
    with anyio.CancelScope(shield=True):
        result = await fn()
    return result


def _resources(cpu: int | None, memory: int | None, disk: int | None, base: Resources = DEFAULTS) -> Resources:
    values = {"cpu": base.cpu if cpu is None else cpu, "memory": base.memory if memory is None else memory,
              "disk": base.disk if disk is None else disk}
    for name, value in values.items():
        low, high = LIMITS[name]
        if not low <= value <= high:
            unit = " GiB" if name != "cpu" else ""
            raise BadRequest(f"{name} must be a whole number from {low} to {high}{unit}, got {value}",
                             "INVALID_RESOURCES")
    return Resources(**values)


def _allow_list(value: str | None) -> tuple[str, ...]:
    """Daytona's comma-separated networkAllowList (at most 10 IPv4 CIDRs), normalized."""
    try:
        return parse_allow_list(value)
    except NetworkError as exc:
        raise BadRequest(exc.message, "INVALID_NETWORK_ALLOW_LIST") from None


def _domain_list(value: str | None) -> tuple[str, ...]:
    """Daytona's comma-separated domainAllowList, normalized (runtime/dns.py)."""
    try:
        return parse_domain_list(value)
    except DnsError as exc:
        raise BadRequest(exc.message, "INVALID_DOMAIN_ALLOW_LIST") from None


def _check_labels(labels: dict[str, str]) -> None:
    language = labels.get(LANGUAGE_LABEL)
    if language is not None and language not in LANGUAGES:
        raise BadRequest(f"label {LANGUAGE_LABEL} must be one of {', '.join(LANGUAGES)}, got {language!r}",
                         "INVALID_LABEL")
    for key in labels:
        if not key or len(key) > 255:
            raise BadRequest("label keys are 1 to 255 characters", "INVALID_LABEL")


def _check_env(env: dict[str, str]) -> None:
    for key, value in env.items():
        if not _ENV_NAME.fullmatch(key):
            raise BadRequest(f"environment variable name {key!r} is not valid: use letters, digits and "
                             "underscores, not starting with a digit", "INVALID_ENV")
        if "\0" in value:
            raise BadRequest(f"environment variable {key} contains a NUL byte", "INVALID_ENV")


def _interval(name: str, value: int | None, default: int, allow_negative: bool = False) -> int:
    if value is None:
        return default
    if value < 0 and not allow_negative:
        raise BadRequest(f"{name} must be 0 or more minutes, got {value}", "INVALID_INTERVAL")
    return value


def _encode_cursor(record: SandboxRecord) -> str:
    return base64.urlsafe_b64encode(json.dumps([record.created_at, record.id]).encode()).decode()


def _decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        created_at, sandbox_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return float(created_at), str(sandbox_id)
    except (ValueError, TypeError):
        raise BadRequest("cursor is not one this server handed out", "INVALID_CURSOR") from None


class SandboxService:
    def __init__(self, records: SandboxRecords, backend: SandboxBackend, view: ProxyView, *,
                 spawn: Spawn, default_auto_stop: int = DEFAULT_AUTO_STOP) -> None:
        self.records = records
        self.spawn = spawn
        self.backend = backend
        self.view = view
        self.default_auto_stop = default_auto_stop
        self.hooks: list[CreateHook] = []  # other resources' part of a create (controlplane/sandboxes/hooks.py)
        self.snapshots: SnapshotSource | None = None  # which snapshot a create names (None: default only)
        self.builds: set[BackgroundTask] = set()  # creates waiting for their image's build

    # -- reads --------------------------------------------------------------------------
    async def get(self, principal: Principal, id_or_name: str) -> SandboxRecord:
        record = await anyio.to_thread.run_sync(self.records.find, principal.organization_id, id_or_name)
        if record is None or record.state == State.DESTROYED:
            raise NotFound(f"Sandbox with ID or name {id_or_name} not found")
        return record

    async def list(self, principal: Principal, *, labels: dict[str, str] | None = None, limit: int = 100,
                   cursor: str | None = None, states_in: list[str] | None = None) -> ListPage:
        if not 1 <= limit <= 200:
            raise BadRequest("limit must be from 1 to 200", "INVALID_LIMIT")
        after = _decode_cursor(cursor) if cursor else None
        # Filters run in the database (indexed on organization and created_at); one row
        # more than asked says whether there is a next page. `states` match what clients
        # see, so transitional ones are matched after the query.
        stored = None
        if states_in and all(s in STORED_STATES for s in states_in):
            stored = list(states_in)
        rows = await anyio.to_thread.run_sync(lambda: self.records.page(
            principal.organization_id, limit=limit + 1, before=after, labels=labels, states=stored))
        if states_in and stored is None:
            rows = [r for r in rows if states.reported(r.state, r.desired_state, r.pending) in states_in]
        more = len(rows) > limit
        page = rows[:limit]
        return ListPage(page, _encode_cursor(page[-1]) if more else None)

    # -- create -------------------------------------------------------------------------
    async def create(self, principal: Principal, body: CreateSandbox) -> SandboxRecord:
        if body.buildInfo is not None and body.snapshot:
            raise BadRequest("give either snapshot or buildInfo (an image), not both", "INVALID_SNAPSHOT")
        if body.gpu or body.gpuType:
            raise BadRequest("GPUs are not available on this server", "GPU_UNAVAILABLE")
        if body.kvm:
            raise BadRequest("KVM sandboxes are not available on this server", "KVM_UNAVAILABLE")
        allow_list = _allow_list(body.networkAllowList)
        domains = _domain_list(body.domainAllowList)
        block_all = (self.default_network_block_all if body.networkBlockAll is None
                     else body.networkBlockAll)
        resources = _resources(body.cpu, body.memory, body.disk)
        _check_labels(body.labels)
        _check_env(body.env)
        if body.name is not None and not _NAME.fullmatch(body.name):
            raise BadRequest(f"invalid sandbox name {body.name!r}: 1 to 255 letters, digits, '.', '_' or '-', "
                             "starting with a letter or digit", "INVALID_NAME")
        auto_stop = _interval("autoStopInterval", body.autoStopInterval, self.default_auto_stop)
        auto_archive = _interval("autoArchiveInterval", body.autoArchiveInterval, DEFAULT_AUTO_ARCHIVE)
        auto_delete = _interval("autoDeleteInterval", body.autoDeleteInterval, DEFAULT_AUTO_DELETE,
                                allow_negative=True)
        owner = await self._link_owner(principal, body.linkedSandbox, auto_delete) if body.linkedSandbox else None
        prepared = Prepared()
        for hook in self.hooks:  # volumes, secrets, ...: each validates before anything exists
            await hook.prepare(principal, body, prepared)
        if body.volumes and not prepared.mounts:
            raise NotImplementedYet("Volumes are not available on this server yet", "VOLUMES_UNAVAILABLE")
        # Last of the checks: for an image, it starts (or joins) the snapshot's build.
        source = await self._source(principal, body)
        sandbox_id = new_id()
        now = time.time()
        record = SandboxRecord(
            id=sandbox_id, organization_id=principal.organization_id, name=body.name or sandbox_id,
            state=State.UNKNOWN.value, desired_state=states.Desired.STARTED.value, pending=True,
            os_user=body.user or DEFAULT_USER, env=dict(body.env), labels=dict(body.labels),
            public=bool(body.public), target=body.target or DEFAULT_TARGET, cpu=resources.cpu, gpu=0,
            memory=resources.memory, disk=resources.disk, auto_stop_interval=auto_stop,
            auto_archive_interval=min(auto_archive or MAX_AUTO_ARCHIVE, MAX_AUTO_ARCHIVE),
            auto_delete_interval=auto_delete, network_block_all=block_all,
            network_allow_list=",".join(allow_list) or None, domain_allow_list=",".join(domains) or None,
            linked_sandbox_id=owner.id if owner is not None else None,
            preview_token=secrets.token_urlsafe(24), created_at=now, updated_at=now,
            snapshot=source.name, volumes=prepared.volumes, last_activity_at=now, extra=dict(prepared.extra),
        )
        if source.building is not None:  # Daytona's pending_build -> building_snapshot -> started
            record.state = State.PENDING_BUILD.value
            record.extra["build_snapshot_id"] = source.building
        await anyio.to_thread.run_sync(self.records.insert, record)
        try:
            for hook in self.hooks:
                await hook.confirm(principal, record)
        except BaseException:
            await anyio.to_thread.run_sync(self.records.remove, record.id)
            raise
        request = CreateRequest(sandbox_id, env={**prepared.env, **body.env}, resources=resources,
                                mounts=tuple(prepared.mounts), network=not block_all,
                                allow_list=allow_list, domain_allow_list=domains,
                                link_to=owner.id if owner is not None else None,
                                link_names=(owner.name,) if owner is not None else (),
                                snapshot=source.store_name or DEFAULT_SNAPSHOT)
        if source.building is not None:
            self._spawn_after_build(record, request, source)
            return record
        return await _shielded(lambda: self._bring_up(record, request))

    async def _source(self, principal: Principal, body: CreateSandbox) -> Source:
        if self.snapshots is not None:
            return await self.snapshots.resolve(principal, body)
        if body.buildInfo is not None:
            raise NotImplementedYet("Building sandboxes from images (CreateSandboxFromImageParams, Image.*) is "
                                    "not available on this server: create from the default snapshot",
                                    "IMAGE_BUILDS_UNAVAILABLE")
        if body.snapshot not in (None, "", DEFAULT_SNAPSHOT, DEFAULT_SNAPSHOT_ID):
            raise BadRequest(f"Snapshot {body.snapshot} not found: the snapshots here are: {DEFAULT_SNAPSHOT}",
                             "SNAPSHOT_NOT_FOUND")
        return Source(DEFAULT_SNAPSHOT, None)

    def _spawn_after_build(self, record: SandboxRecord, request: CreateRequest, source: Source) -> None:
        for ended in [task for task in self.builds if task.done()]:
            self.builds.discard(ended)
        self.builds.add(self.spawn(self._after_build(record, request, source), name=f"create {record.id} once built"))

    async def close(self, grace: float = 30) -> None:
        """Let the creates that waited on a build end: their builds have ended by now (the
        snapshots close first), so each records its outcome. Cancelled only after `grace`
        seconds: a cancel would cut that record short (anyio's shields do not hold against
        an asyncio cancel) and leave it to the next start's reconcile."""
        builds = list(self.builds)
        try:
            async with asyncio.timeout(grace):
                await asyncio.gather(*(task.wait() for task in builds))
        except TimeoutError:
            for task in builds:
                task.cancel()
            await asyncio.gather(*(task.wait() for task in builds))

    async def _after_build(self, record: SandboxRecord, request: CreateRequest, source: Source) -> None:
        """The rest of a create from an image, in the background: wait for the snapshot's
        build, then bring the sandbox up; a failed build leaves the record build_failed
        with the build's reason (the SDK raises it), nothing else behind."""
        assert self.snapshots is not None
        organization = record.organization_id
        try:
            await anyio.to_thread.run_sync(lambda: self.records.change(
                organization, record.id, state=State.BUILDING_SNAPSHOT.value))
            store_name = await self.snapshots.ready(source)
        except asyncio.CancelledError:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(lambda: self.records.finish(
                    record.id, State.BUILD_FAILED.value, "the control plane stopped during the build"))
            raise
        except Exception as exc:  # noqa: BLE001 -- the build's failure is the sandbox's outcome
            reason = str(exc) or type(exc).__name__
            await anyio.to_thread.run_sync(lambda: self.records.finish(record.id, State.BUILD_FAILED.value, reason))
            return
        await anyio.to_thread.run_sync(lambda: self.records.change(organization, record.id,
                                                                   state=State.UNKNOWN.value))
        request = dataclasses.replace(request, snapshot=store_name)
        await _shielded(lambda: self._bring_up_built(record, request))

    async def _bring_up_built(self, record: SandboxRecord, request: CreateRequest) -> None:
        """`_bring_up` for a create nobody waits on: a failure is recorded (`error` with the
        reason, which the SDK's wait reports) rather than raised, and whatever the
        backend made goes."""
        try:
            await self.backend.create(request)
        except Exception as exc:  # noqa: BLE001 -- recorded for the client
            try:
                await self.backend.destroy(record.id)
            except Exception as cleanup:  # noqa: BLE001 -- the original error matters more
                log.warning("could not clean up sandbox %s after a failed create: %s", record.id, cleanup)
            reason = exc.message if isinstance(exc, BackendError) else (str(exc) or type(exc).__name__)
            await anyio.to_thread.run_sync(lambda: self.records.finish(
                record.id, State.ERROR.value, f"Failed to create the sandbox: {reason}"))
            return
        await self._started(record.id)

    async def _link_owner(self, principal: Principal, id_or_name: str, auto_delete: int) -> SandboxRecord:
        """Daytona's rules for `linkedSandbox`: an existing sandbox of the same organization
        (another's is a 404, as any sandbox of another's), not itself a follower, and the
        follower ephemeral (`ephemeral=True`, autoDeleteInterval 0)."""
        owner = await self.get(principal, id_or_name)
        if owner.linked_sandbox_id is not None:
            raise BadRequest(f"Sandbox {id_or_name} is itself linked to sandbox {owner.linked_sandbox_id}: "
                             "link to that one instead", "INVALID_LINKED_SANDBOX")
        if auto_delete != 0:
            raise BadRequest("a linked sandbox must be ephemeral: create it with ephemeral=True "
                             "(autoDeleteInterval 0)", "INVALID_LINKED_SANDBOX")
        return owner

    async def _bring_up(self, record: SandboxRecord, request: CreateRequest) -> SandboxRecord:
        try:
            await self.backend.create(request)
        except BaseException as exc:
            # Nothing half-created: whatever the backend made goes, and so does the record.
            try:
                await self.backend.destroy(record.id)
            except Exception as cleanup:  # noqa: BLE001 -- the original error matters more
                log.warning("could not clean up sandbox %s after a failed create: %s", record.id, cleanup)
            await anyio.to_thread.run_sync(self.records.remove, record.id)
            if isinstance(exc, BackendError):
                raise ApiError(exc.status, f"Failed to create the sandbox: {exc.message}", "BACKEND_ERROR") from None
            raise
        await self._started(record.id)
        record.state, record.desired_state, record.pending = State.STARTED.value, State.STARTED.value, False
        return record

    # -- lifecycle ----------------------------------------------------------------------
    async def _begin(self, principal: Principal, id_or_name: str, action: str) -> SandboxRecord | None:
        """The record with its change marked pending, or None if there is nothing to do."""
        record = await self.get(principal, id_or_name)
        if not states.check(action, record.id, record.state, record.pending):
            return None
        transition = states.TRANSITIONS[action]
        allowed = [s.value for s in transition.allowed_from]
        won = await anyio.to_thread.run_sync(
            self.records.begin, principal.organization_id, record.id, transition.desired.value, allowed)
        if not won:  # another request changed it in between: report what it is now
            fresh = await self.get(principal, record.id)
            states.check(action, fresh.id, fresh.state, True)
        record.pending, record.desired_state = True, transition.desired.value
        return record

    async def _fail(self, record: SandboxRecord, exc: BackendError, verb: str) -> ApiError:
        existence = (await self.backend.status()).get(record.id)
        state = existence.value if existence is not None else State.ERROR.value
        reason = None if existence is not None else exc.message
        await anyio.to_thread.run_sync(lambda: self.records.finish(record.id, state, reason))
        await self.view.publish()
        return ApiError(exc.status, f"Failed to {verb} sandbox {record.id}: {exc.message}", "BACKEND_ERROR")

    async def start(self, principal: Principal, id_or_name: str) -> SandboxRecord:
        record = await self._begin(principal, id_or_name, "start")
        if record is None:
            return await self.get(principal, id_or_name)

        await _shielded(lambda: self._bring_back(record, "start"))
        return await self.get(principal, record.id)

    async def _bring_back(self, record: SandboxRecord, verb: str) -> None:
        """Start an existing sandbox in the backend, record it started, and return once the
        proxy routes it (start and recover)."""
        try:
            await self.backend.start(record.id)
        except BackendError as exc:
            raise await self._fail(record, exc, verb) from None
        await self._started(record.id)

    async def _started(self, sandbox_id: str) -> None:
        """Record a sandbox started (create, start, recover) and return once the proxy routes
        it. Starting counts as activity: auto-stop's idle time runs from here, not from the
        create request a build may have kept waiting for minutes. Routed first: a client
        acting on the state (its event, a poll, a create from an image nobody's request
        waits on) never gets the proxy's sandbox-not-found."""
        await self.view.publish(coming=sandbox_id)
        try:
            await self.view.until_routed(sandbox_id)
        finally:
            try:
                await anyio.to_thread.run_sync(
                    lambda: self.records.finish(sandbox_id, State.STARTED.value, last_activity_at=time.time()))
            finally:
                self.view.arrived(sandbox_id)
            await self.view.publish()

    async def stop(self, principal: Principal, id_or_name: str, force: bool = False) -> SandboxRecord | None:
        """The stopped sandbox, or None once an ephemeral one (autoDeleteInterval 0) is gone."""
        record = await self._begin(principal, id_or_name, "stop")
        if record is None:
            return await self.get(principal, id_or_name)

        async def work() -> None:
            await self.view.publish()  # the proxy stops routing first
            try:
                await self.backend.stop(record.id)
            except BackendError as exc:
                raise await self._fail(record, exc, "stop") from None
            await anyio.to_thread.run_sync(lambda: self.records.finish(record.id, State.STOPPED.value))

        await _shielded(work)
        if record.auto_delete_interval == 0:
            await self.delete(principal, record.id)
            return None
        return await self.get(principal, record.id)

    async def delete(self, principal: Principal, id_or_name: str) -> SandboxRecord:
        owner = await self.get(principal, id_or_name)
        # Followers go with their owner (first): ephemeral, they exist for its sake.
        for follower in await anyio.to_thread.run_sync(self.records.followers, principal.organization_id,
                                                       owner.id):
            try:
                await self.delete(principal, follower)
            except NotFound:
                pass  # deleted meanwhile
        record = await self._begin(principal, owner.id, "destroy")
        assert record is not None

        async def work() -> None:
            await self.view.publish()
            try:
                await self.backend.destroy(record.id)
            except BackendError as exc:
                raise await self._fail(record, exc, "delete") from None
            await anyio.to_thread.run_sync(self.records.remove, record.id)

        await _shielded(work)
        record.state, record.desired_state, record.pending = State.DESTROYED.value, State.DESTROYED.value, False
        return record

    # -- settings -----------------------------------------------------------------------
    async def update(self, principal: Principal, id_or_name: str, **changes: Any) -> SandboxRecord:
        record = await self.get(principal, id_or_name)
        await anyio.to_thread.run_sync(lambda: self.records.change(principal.organization_id, record.id, **changes))
        if "public" in changes:
            await self.view.publish()
        return await self.get(principal, record.id)

    @property
    def default_network_block_all(self) -> bool:
        return bool(getattr(self.backend, "default_network_block_all", True))

    async def set_network(self, principal: Principal, id_or_name: str, block_all: bool | None,
                          allow_list: str | None, domain_allow_list: str | None) -> SandboxRecord:
        """`POST /sandbox/{id}/network-settings`: what is not given stays; applied live.

        The SDK's meaning: an allow list (of either kind) implies not blocking all;
        networkBlockAll=false alone restores general egress and clears the stored lists.
        The two lists combine: a destination passes if either allows it."""
        record = await self.get(principal, id_or_name)
        new_list = _allow_list(record.network_allow_list if allow_list is None else allow_list)
        new_domains = _domain_list(record.domain_allow_list if domain_allow_list is None else domain_allow_list)
        if allow_list is not None or domain_allow_list is not None:
            new_block = bool(block_all)
        elif block_all is False:
            new_list, new_domains, new_block = (), (), False
        else:
            new_block = record.network_block_all if block_all is None else block_all
        try:
            await self.backend.set_network(record.id, new_block, new_list, new_domains)
        except BackendError as exc:
            raise ApiError(exc.status, f"Failed to change the network settings: {exc.message}",
                           "BACKEND_ERROR") from None
        return await self.update(principal, record.id, network_block_all=new_block,
                                 network_allow_list=",".join(new_list) or None,
                                 domain_allow_list=",".join(new_domains) or None)

    async def set_labels(self, principal: Principal, id_or_name: str, labels: dict[str, str]) -> SandboxRecord:
        """Replaces the labels, but keeps `code-toolbox-language`: the SDK picks the
        sandbox's language from it on every get."""
        _check_labels(labels)
        record = await self.get(principal, id_or_name)
        new = dict(labels)
        if LANGUAGE_LABEL not in new and LANGUAGE_LABEL in record.labels:
            new[LANGUAGE_LABEL] = record.labels[LANGUAGE_LABEL]
        return await self.update(principal, record.id, labels=new)

    async def set_interval(self, principal: Principal, id_or_name: str, which: str, minutes: int) -> SandboxRecord:
        """autostop (0 = never), autoarchive (0 = the maximum), autodelete (< 0 never, 0 on
        stop), autopause and ttl (kept; pausing and TTLs are not enforced yet)."""
        if which == "autodelete":
            return await self.update(principal, id_or_name, auto_delete_interval=minutes)
        if minutes < 0:
            raise BadRequest(f"the {which} interval must be 0 or more minutes, got {minutes}", "INVALID_INTERVAL")
        if which == "autostop":
            return await self.update(principal, id_or_name, auto_stop_interval=minutes)
        if which == "autoarchive":
            return await self.update(principal, id_or_name,
                                     auto_archive_interval=min(minutes or MAX_AUTO_ARCHIVE, MAX_AUTO_ARCHIVE))
        record = await self.get(principal, id_or_name)
        key = {"autopause": "autoPauseInterval", "ttl": "ttlMinutes"}[which]
        return await self.update(principal, record.id, extra={**record.extra, key: minutes})

    async def touch(self, principal: Principal, id_or_name: str) -> None:
        await self.update(principal, id_or_name, last_activity_at=time.time())

    async def archive(self, principal: Principal, id_or_name: str) -> SandboxRecord:
        record = await self._begin(principal, id_or_name, "archive")
        if record is None:
            return await self.get(principal, id_or_name)

        async def work() -> None:
            try:
                await self.backend.archive(record.id)
            except BackendError as exc:
                raise await self._fail(record, exc, "archive") from None
            await anyio.to_thread.run_sync(lambda: self.records.finish(record.id, State.ARCHIVED.value))

        await _shielded(work)
        return await self.get(principal, record.id)

    async def recover(self, principal: Principal, id_or_name: str) -> SandboxRecord:
        record = await self._begin(principal, id_or_name, "recover")
        if record is None:
            return await self.get(principal, id_or_name)

        async def work() -> None:
            if record.id not in await self.backend.status():
                await anyio.to_thread.run_sync(lambda: self.records.finish(record.id, State.ERROR.value,
                                                                           record.error_reason))
                raise BadRequest(f"Sandbox {record.id} cannot be recovered: it is gone from the backend "
                                 "(delete it and create a new one)", "NOT_RECOVERABLE")
            await self._bring_back(record, "recover")

        await _shielded(work)
        return await self.get(principal, record.id)

    async def resize(self, principal: Principal, id_or_name: str, cpu: int | None, memory: int | None,
                     disk: int | None) -> SandboxRecord:
        current = await self.get(principal, id_or_name)
        resources = _resources(cpu, memory, disk, Resources(current.cpu, current.memory, current.disk))
        if resources.disk < current.disk:
            raise BadRequest(f"disk can only grow (now {current.disk} GiB)", "INVALID_RESOURCES")
        record = await self._begin(principal, id_or_name, "resize")
        assert record is not None
        before = record.state

        async def work() -> None:
            try:
                await self.backend.resize(record.id, resources)
            except BackendError as exc:
                raise await self._fail(record, exc, "resize") from None
            await anyio.to_thread.run_sync(lambda: self.records.finish(
                record.id, before, cpu=resources.cpu, memory=resources.memory, disk=resources.disk))
            await self.view.publish()

        await _shielded(work)
        return await self.get(principal, record.id)
