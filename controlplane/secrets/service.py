"""Secrets (control-plane-api.md §5.1): create (201), list (cursor pages), get, update,
delete; and the sandbox side, `CreateSandbox.secrets` / `PUT /sandbox/{id}/secrets` as
`[{"ENV_NAME": "secret-name"}]`.

Upstream hands sandboxes an opaque placeholder and swaps in the value at its egress proxy
for the secret's `hosts`. Sandboxes here have no outbound network, so there is no egress
layer to do that: the value itself is injected as the environment variable, and only the
placeholder ever appears in an API response. Changes through `PUT /sandbox/{id}/secrets`
(and new values of a secret) reach a sandbox at its next start, as upstream says of
sandboxes created without secrets.
"""

from __future__ import annotations

import base64
import builtins
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio

from controlplane.auth import Principal
from controlplane.errors import BadRequest, NotFound
from controlplane.sandboxes.dto import CreateSandbox
from controlplane.sandboxes.hooks import Prepared
from controlplane.sandboxes.records import SandboxRecord
from controlplane.secrets.records import SecretRecord, SecretRecords

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
MAX_VALUE = 64 * 1024
EXTRA_KEY = "secrets"  # the sandbox record's extra: {"ENV": "secret name"}
SORTS = {"name": "name", "createdAt": "created_at", "updatedAt": "updated_at"}


@dataclass(frozen=True)
class SecretPage:
    items: list[SecretRecord]
    total: int
    next_cursor: str | None


def placeholder(secret_id: str) -> str:
    """Opaque and stable per secret; derived from the id only, so it reveals nothing."""
    return "dtn_secret_" + secret_id.replace("-", "")


def _check_value(value: str) -> None:
    if "\0" in value or len(value) > MAX_VALUE:
        raise BadRequest(f"a secret value is at most {MAX_VALUE} characters without NUL bytes", "INVALID_SECRET")


def _check_hosts(hosts: list[str]) -> None:
    for host in hosts:
        if not host or len(host) > 253 or any(c.isspace() or c in "/\0" for c in host):
            raise BadRequest(f"invalid host {host!r}: a host name or *.domain", "INVALID_SECRET")


def mapping(entries: list[dict[str, str]]) -> dict[str, str]:
    """`[{"ENV": "name"}, ...]` as one {ENV: name}, validated."""
    out: dict[str, str] = {}
    for entry in entries:
        for env, name in entry.items():
            if not _ENV_NAME.fullmatch(env):
                raise BadRequest(f"environment variable name {env!r} is not valid: use letters, digits and "
                                 "underscores, not starting with a digit", "INVALID_ENV")
            if env in out:
                raise BadRequest(f"environment variable {env} names two secrets", "INVALID_ENV")
            out[env] = name
    return out


def _cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(str(offset).encode()).decode()


def _offset(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        return max(0, int(base64.urlsafe_b64decode(cursor.encode())))
    except ValueError:
        raise BadRequest("cursor is not one this server handed out", "INVALID_CURSOR") from None


# Called with the organization after a secret's value changes or a secret goes, so the
# sandboxes that name it get the new environment at their next start.
ChangeListener = Callable[[Principal], Awaitable[None]]


class SecretService:
    def __init__(self, records: SecretRecords) -> None:
        self.records = records
        self.listeners: builtins.list[ChangeListener] = []

    async def _changed(self, principal: Principal) -> None:
        for listener in self.listeners:
            await listener(principal)

    async def create(self, principal: Principal, name: str, value: str, description: str | None,
                     hosts: list[str]) -> SecretRecord:
        if not _NAME.fullmatch(name):
            raise BadRequest(f"invalid secret name {name!r}: 1 to 255 letters, digits, '.', '_' or '-', starting "
                             "with a letter or digit", "INVALID_SECRET")
        _check_value(value)
        _check_hosts(hosts)
        now = time.time()
        record = SecretRecord(id=str(uuid.uuid4()), organization_id=principal.organization_id, name=name,
                              description=description, created_at=now, updated_at=now, hosts=list(hosts))
        await anyio.to_thread.run_sync(self.records.insert, record, value)
        return record

    async def get(self, principal: Principal, secret_id: str) -> SecretRecord:
        found = await anyio.to_thread.run_sync(self.records.get, principal.organization_id, secret_id)
        if found is None:
            raise NotFound(f"Secret {secret_id} not found")
        return found

    async def list(self, principal: Principal, *, cursor: str | None, limit: int, name: str | None,
                   sort: str, order: str) -> SecretPage:
        if not 1 <= limit <= 200:
            raise BadRequest("limit must be from 1 to 200", "INVALID_LIMIT")
        if sort not in SORTS:
            raise BadRequest(f"sort must be one of {', '.join(SORTS)}, got {sort!r}", "INVALID_SORT")
        if order not in ("asc", "desc"):
            raise BadRequest(f"order must be asc or desc, got {order!r}", "INVALID_SORT")
        rows = await anyio.to_thread.run_sync(self.records.of_organization, principal.organization_id)
        if name:
            rows = [r for r in rows if name.lower() in r.name.lower()]
        rows.sort(key=lambda r: (getattr(r, SORTS[sort]), r.id), reverse=order == "desc")
        start = _offset(cursor)
        page = rows[start:start + limit]
        more = start + limit < len(rows)
        return SecretPage(page, len(rows), _cursor(start + limit) if more else None)

    async def update(self, principal: Principal, secret_id: str, *, value: str | None, description: str | None,
                     hosts: builtins.list[str] | None) -> SecretRecord:
        await self.get(principal, secret_id)
        changes: dict[str, object] = {"updated_at": time.time()}
        if value is not None:
            _check_value(value)
            changes["value"] = value
        if description is not None:
            changes["description"] = description
        if hosts is not None:
            _check_hosts(hosts)
            changes["hosts"] = list(hosts)
        await anyio.to_thread.run_sync(lambda: self.records.change(principal.organization_id, secret_id, **changes))
        if value is not None:
            await self._changed(principal)
        return await self.get(principal, secret_id)

    async def delete(self, principal: Principal, secret_id: str) -> None:
        if not await anyio.to_thread.run_sync(self.records.remove, principal.organization_id, secret_id):
            raise NotFound(f"Secret {secret_id} not found")
        await self._changed(principal)

    async def environment(self, principal: Principal, wanted: dict[str, str], *,
                          skip_missing: bool = False) -> dict[str, str]:
        """{ENV: value} for {ENV: secret name}; an unknown name is a 404 (or left out)."""
        found = await anyio.to_thread.run_sync(self.records.values_for, principal.organization_id,
                                               sorted(set(wanted.values())))
        missing = sorted(set(wanted.values()) - set(found))
        if missing and not skip_missing:
            raise NotFound(f"Secret {missing[0]} not found")
        return {env: found[name][1] for env, name in wanted.items() if name in found}

    # -- the sandbox create hook ----------------------------------------------------------
    async def prepare(self, principal: Principal, body: CreateSandbox, prepared: Prepared) -> None:
        if not body.secrets:
            return
        wanted = mapping(body.secrets)
        clash = sorted(set(wanted) & set(body.env))
        if clash:
            raise BadRequest(f"environment variable {clash[0]} is set both in env and from a secret", "INVALID_ENV")
        prepared.env.update(await self.environment(principal, wanted))
        prepared.extra[EXTRA_KEY] = wanted

    async def confirm(self, principal: Principal, record: SandboxRecord) -> None:
        return None


