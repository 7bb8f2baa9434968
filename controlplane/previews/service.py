"""Signed preview URLs (`create_signed_preview_url` / `expire_signed_preview_url`) and the
per-sandbox signing key of Daytona's signed file URLs (`download_url` / `upload_url`).

Preview labels are minted with the proxy's own signer (`proxy.auth.Auth`, the proxy's
secret), so the proxy verifies them with no call back here; they are bound to sandbox,
port, expiry and the sandbox's preview token. Expiring one early puts its label on the
sandbox's revoked list, which the proxy reads from its registry entry; entries leave the
list once they would have expired anyway. The signing key lives in the sandbox record's
`extra` and reaches the proxy the same way (`files_key`); rotating it replaces it, so every
URL signed with the old key fails (proxy/fileurls.py).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

import anyio

from controlplane.auth import Principal
from controlplane.errors import BadRequest, NotFound, NotImplementedYet
from controlplane.proxyview import ProxyView
from controlplane.sandboxes.dto import CreateSandbox
from controlplane.sandboxes.hooks import Prepared
from controlplane.sandboxes.records import SandboxRecord, SandboxRecords
from controlplane.sandboxes.service import SandboxService
from proxy.auth import Auth, SignedExpiryError, SignedLabelError
from proxy.registry import Sandbox

SIGNING_KEY = "signingKey"  # keys in the sandbox record's extra
REVOKED = "revokedPreviews"  # {label: expires_at}
DEFAULT_EXPIRY = 60
# The proxy re-reads its registry file at most this often (proxy/registry.py CHECK_INTERVAL);
# a new key or a revocation is answered only once the proxy acts on it.
PROXY_REFRESH = 0.3


@dataclass(frozen=True)
class SignedPreview:
    sandbox_id: str
    port: int
    token: str


def _as_routed(record: SandboxRecord) -> Sandbox:
    """What the proxy's signer needs of a sandbox: its id and preview token (the MAC covers both)."""
    return Sandbox(record.id, "", record.preview_token)


def _check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise BadRequest("port must be from 1 to 65535", "INVALID_PORT")


class PreviewService:
    def __init__(self, sandboxes: SandboxService, records: SandboxRecords, view: ProxyView,
                 secret: bytes | None) -> None:
        self.sandboxes = sandboxes
        self.records = records
        self.view = view
        self.auth = Auth(secret, ()) if secret else None
        self._lock = anyio.Lock()  # extra is read-modified-written here

    def _signer(self) -> Auth:
        if self.auth is None:
            raise NotImplementedYet("signed preview URLs need the proxy's secret, which this control plane was "
                                    "not given", "SIGNED_PREVIEWS_UNAVAILABLE")
        return self.auth

    async def sign(self, principal: Principal, id_or_name: str, port: int, expires_in: int | None) -> SignedPreview:
        record = await self.sandboxes.get(principal, id_or_name)
        _check_port(port)
        signer = self._signer()
        try:
            label = signer.sign_preview(_as_routed(record), port, DEFAULT_EXPIRY if expires_in is None else expires_in)
        except SignedExpiryError as exc:
            raise BadRequest(str(exc), "INVALID_EXPIRY") from None
        except SignedLabelError as exc:
            raise BadRequest(str(exc), "SANDBOX_ID_TOO_LONG") from None
        return SignedPreview(record.id, port, label)

    async def expire(self, principal: Principal, id_or_name: str, port: int, token: str) -> None:
        record = await self.sandboxes.get(principal, id_or_name)
        _check_port(port)
        signed = self._signer().signed_label_for(token, _as_routed(record), port)
        if signed is None:
            raise NotFound(f"Signed preview URL token {token} not found for port {port} of sandbox {record.id}")
        async with self._lock:
            fresh = await self.sandboxes.get(principal, record.id)
            now = time.time()
            revoked = {k: v for k, v in dict(fresh.extra.get(REVOKED) or {}).items() if v >= now}
            if signed.expires_at >= now:
                revoked[token] = signed.expires_at
            await self._save(principal, record.id, {**fresh.extra, REVOKED: revoked})
        await anyio.sleep(PROXY_REFRESH)

    async def signing_key(self, principal: Principal, id_or_name: str, *, rotate: bool = False) -> str:
        record = await self.sandboxes.get(principal, id_or_name)
        async with self._lock:
            fresh = await self.sandboxes.get(principal, record.id)
            key = fresh.extra.get(SIGNING_KEY)
            if isinstance(key, str) and key and not rotate:
                return key
            key = secrets.token_urlsafe(32)
            await self._save(principal, record.id, {**fresh.extra, SIGNING_KEY: key})
        await anyio.sleep(PROXY_REFRESH)
        return key

    # -- the sandbox create hook: a signing key from the start, in the registry before
    # the sandbox is routed, so its first signed URL needs no wait ----------------------
    async def prepare(self, principal: Principal, body: CreateSandbox, prepared: Prepared) -> None:
        prepared.extra[SIGNING_KEY] = secrets.token_urlsafe(32)

    async def confirm(self, principal: Principal, record: SandboxRecord) -> None:
        return None

    async def _save(self, principal: Principal, sandbox_id: str, extra: dict[str, Any]) -> None:
        await anyio.to_thread.run_sync(lambda: self.records.change(principal.organization_id, sandbox_id,
                                                                   extra=extra))
        await self.view.publish()

    def decorate(self, entries: dict[str, dict[str, Any]]) -> None:
        """Add each routed sandbox's signing key and revoked labels to its registry entry
        (called by ProxyView in its worker thread)."""
        if not entries:
            return
        now = time.time()
        for record in self.records.all():
            entry = entries.get(record.id)
            if entry is None:
                continue
            key = record.extra.get(SIGNING_KEY)
            if isinstance(key, str) and key:
                entry["files_key"] = key
            revoked = [k for k, v in dict(record.extra.get(REVOKED) or {}).items() if v >= now]
            if revoked:
                entry["revoked"] = revoked
