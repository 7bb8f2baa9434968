"""The secrets a sandbox names (applied at its next start), SSH access (not available: 501) and telemetry
(no series recorded yet)."""

from __future__ import annotations

import anyio
from sqlalchemy import select

from controlplane.auth import Principal
from controlplane.backend import SandboxBackend
from controlplane.errors import BadRequest, NotImplementedYet
from controlplane.sandboxes.records import SandboxRecord, SandboxRecords
from controlplane.sandboxes.service import SandboxService
from controlplane.secrets.service import EXTRA_KEY, SecretService, mapping
from controlplane.store.schema import sandboxes

SSH = ("SSH access is not available on this server yet: use sandbox.process.exec(...) or the PTY API "
       "(sandbox.process.create_pty_session) for a shell")


class SandboxSettings:
    def __init__(self, sandboxes: SandboxService, records: SandboxRecords, secrets: SecretService,
                 backend: SandboxBackend) -> None:
        self.sandboxes = sandboxes
        self.records = records
        self.secrets = secrets
        self.backend = backend

    async def set_secrets(self, principal: Principal, id_or_name: str,
                          entries: list[dict[str, str]]) -> SandboxRecord:
        """Replace the sandbox's secrets; the environment changes at its next start."""
        record = await self.sandboxes.get(principal, id_or_name)
        wanted = mapping(entries)
        clash = sorted(set(wanted) & set(record.env))
        if clash:
            raise BadRequest(f"environment variable {clash[0]} is set both in env and from a secret", "INVALID_ENV")
        injected = await self.secrets.environment(principal, wanted)
        set_env = getattr(self.backend, "set_env", None)
        if set_env is None:
            raise NotImplementedYet("this sandbox backend cannot change a sandbox's secrets yet",
                                    "SECRETS_UNAVAILABLE")
        await set_env(record.id, {**record.env, **injected})
        extra = {**record.extra, EXTRA_KEY: wanted}
        await anyio.to_thread.run_sync(lambda: self.records.change(principal.organization_id, record.id,
                                                                   extra=extra))
        return await self.sandboxes.get(principal, record.id)

    async def reapply(self, principal: Principal) -> None:
        """After a secret of the organization changed value or went: every sandbox naming
        one gets the current values at its next start (a deleted secret drops out)."""
        set_env = getattr(self.backend, "set_env", None)
        if set_env is None:
            return
        def named() -> list[tuple[str, dict[str, str], dict[str, str]]]:
            query = select(sandboxes.c.id, sandboxes.c.env, sandboxes.c.extra).where(
                sandboxes.c.organization_id == principal.organization_id)
            with self.records.engine.connect() as conn:
                rows = conn.execute(query).all()
            return [(r.id, r.env or {}, r.extra[EXTRA_KEY]) for r in rows
                    if isinstance(r.extra, dict) and isinstance(r.extra.get(EXTRA_KEY), dict) and r.extra[EXTRA_KEY]]

        for sandbox_id, env, wanted in await anyio.to_thread.run_sync(named):
            injected = await self.secrets.environment(principal, wanted, skip_missing=True)
            await set_env(sandbox_id, {**env, **injected})

    async def ssh(self, principal: Principal, id_or_name: str | None) -> None:
        if id_or_name is not None:
            await self.sandboxes.get(principal, id_or_name)  # an unknown sandbox is still a 404
        raise NotImplementedYet(SSH, "SSH_UNAVAILABLE")

    async def metrics(self, principal: Principal, id_or_name: str) -> list[dict[str, object]]:
        await self.sandboxes.get(principal, id_or_name)
        return []
