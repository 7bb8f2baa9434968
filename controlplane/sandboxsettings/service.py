"""Network settings (stored and echoed; enforcement is another issue), the secrets a
sandbox names (applied at its next start), SSH access (not available: 501) and telemetry
(no series recorded yet)."""

from __future__ import annotations

import anyio

from controlplane.auth import Principal
from controlplane.backend import SandboxBackend
from controlplane.errors import BadRequest, NotImplementedYet
from controlplane.sandboxes.records import SandboxRecord, SandboxRecords
from controlplane.sandboxes.service import SandboxService
from controlplane.secrets.service import EXTRA_KEY, SecretService, mapping

SSH = ("SSH access is not available on this server yet: use sandbox.process.exec(...) or the PTY API "
       "(sandbox.process.create_pty_session) for a shell")


class SandboxSettings:
    def __init__(self, sandboxes: SandboxService, records: SandboxRecords, secrets: SecretService,
                 backend: SandboxBackend) -> None:
        self.sandboxes = sandboxes
        self.records = records
        self.secrets = secrets
        self.backend = backend

    async def network(self, principal: Principal, id_or_name: str, block_all: bool | None,
                      allow_list: str | None, domain_allow_list: str | None) -> SandboxRecord:
        record = await self.sandboxes.get(principal, id_or_name)
        if block_all is False:
            raise BadRequest("sandboxes on this server have no outbound network (loopback only): "
                             "networkBlockAll cannot be false", "NETWORK_UNAVAILABLE")
        changes: dict[str, object] = {}
        if allow_list is not None:
            changes["network_allow_list"] = allow_list
        if domain_allow_list is not None:
            changes["domain_allow_list"] = domain_allow_list
        if changes:
            return await self.sandboxes.update(principal, record.id, **changes)
        return record

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

    async def ssh(self, principal: Principal, id_or_name: str | None) -> None:
        if id_or_name is not None:
            await self.sandboxes.get(principal, id_or_name)  # an unknown sandbox is still a 404
        raise NotImplementedYet(SSH, "SSH_UNAVAILABLE")

    async def metrics(self, principal: Principal, id_or_name: str) -> list[dict[str, object]]:
        await self.sandboxes.get(principal, id_or_name)
        return []
