"""Who a request comes from: every credential the proxy accepts, checked in one place.

`Authenticator.authenticate()` takes what a request presents (`Presented`, read once from
its headers and query) and what it asks for (a preview host, a toolbox path, or nothing:
the proxy's own routes) and returns a `Caller`: the sandbox, the credential that let it in
and what its API key reaches. A caller that may not pass gets a ProxyError with the status
and message the client sees. The HMAC primitives themselves are `proxy/auth.py`'s.

On a preview the first credential that holds wins: a signed label (the host itself), the
preview-token header, the query token, an API key that reaches the sandbox, the session
cookie (from the preview's own origin only, for a WebSocket). Then a public sandbox needs
none, except on the private ports, and a CORS preflight from a sibling preview origin of
the same sandbox passes bare (`_sibling_preflight`). On the toolbox path: an API key that
reaches the sandbox (another organization's is answered as an unknown id), a signed file
URL, or the preview-token header.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Literal

from starlette.types import Scope

from proxy.auth import PREVIEW_HEADER, QUERY_PARAM, Auth, split_cookies, strip_query_param
from proxy.config import ProxyConfig
from proxy.errors import ProxyError, header
from proxy.fileurls import FileUrlError, is_signed_file_request
from proxy.fileurls import verify as verify_file_url
from proxy.hosts import PreviewHost, parse_preview_host
from proxy.registry import Registry, RegistryError, Sandbox

ALL_SANDBOXES = "*all*"  # what a static (PROXY_API_KEYS) key may reach
_QUERY_PARAM_BYTES = QUERY_PARAM.encode()
_NO_COOKIES: dict[str, str] = {}

# Which credential let a caller in; "public": none was needed, "none": none was presented
# (the proxy's own routes decide what that means for them).
Via = Literal["signed", "header", "query", "api-key", "cookie", "public", "preflight", "signed-file", "none"]


@dataclass(slots=True)  # not frozen: built on every request, and frozen init costs ~1 µs more
class Presented:
    """The credentials a request carries, read once from its scope."""

    authorization: bytes | None
    header_token: bytes | None  # X-Daytona-Preview-Token
    raw_query: bytes  # as sent
    query: bytes  # without the proxy's token parameter
    query_token: str | None
    cookies: dict[str, str]  # the proxy's own cookies
    other_cookies: bytes | None  # the Cookie header without them (None when nothing is left)

    @classmethod
    def of(cls, scope: Scope) -> Presented:
        authorization = header_token = cookie = None
        for key, value in scope["headers"]:
            if key == b"cookie":
                cookie = value if cookie is None else cookie + b"; " + value
            elif key == b"authorization":
                if authorization is None:
                    authorization = value
            elif key == PREVIEW_HEADER and header_token is None:
                header_token = value
        raw_query: bytes = scope.get("query_string", b"")
        query, query_token = raw_query, None
        if _QUERY_PARAM_BYTES in raw_query:
            query, query_token = strip_query_param(raw_query, QUERY_PARAM)
        cookies, other_cookies = split_cookies(cookie) if cookie else (_NO_COOKIES, None)
        return cls(authorization, header_token, raw_query, query, query_token, cookies, other_cookies)


@dataclass(frozen=True, slots=True)
class ToolboxPath:
    """`/toolbox/{sandbox_id}{rest}`, parsed (proxy/hosts.py)."""

    sandbox_id: str
    rest: bytes


@dataclass(slots=True)
class Caller:
    via: Via
    sandbox: Sandbox | None  # None on the proxy's own routes
    key: str | None  # what the API key presented reaches: ALL_SANDBOXES, an organization id, or None
    # The API key reaches `sandbox`: it is the proxy's credential and goes no further.
    key_reaches: bool
    query: bytes  # the query to forward: without the proxy's token (a signed file URL: `path` only)

    @property
    def operator(self) -> bool:
        """A static (PROXY_API_KEYS) key: /metrics and every sandbox."""
        return self.key is ALL_SANDBOXES

    def reaches(self, sandbox: Sandbox) -> bool:
        return key_reaches(self.key, sandbox)


def key_reaches(key: str | None, sandbox: Sandbox) -> bool:
    if key is None:
        return False
    return key is ALL_SANDBOXES or sandbox.organization is None or key == sandbox.organization


def not_found(sandbox_id: str) -> ProxyError:
    return ProxyError(404, "sandbox-not-found",
                      f"No sandbox '{sandbox_id}' is registered with this proxy: it may have been "
                      "deleted or not started yet.")


class Authenticator:
    def __init__(self, auth: Auth, registry: Registry, config: ProxyConfig) -> None:
        self.auth = auth
        self.registry = registry
        self.config = config

    async def authenticate(self, scope: Scope, presented: Presented,
                           resource: PreviewHost | ToolboxPath | None = None) -> Caller:
        """Who is calling, for `resource`; raises ProxyError (401, 403, 404, 503) otherwise."""
        if isinstance(resource, PreviewHost):
            return await self._preview(scope, presented, resource)
        if isinstance(resource, ToolboxPath):
            return await self._toolbox(scope, presented, resource)
        key = await self._key(presented.authorization)
        return Caller("api-key" if key is not None else "none", None, key, False, presented.query)

    # -- sandboxes ------------------------------------------------------------------------
    async def lookup(self, sandbox_id: str) -> Sandbox | None:
        try:
            return await self.registry.get(sandbox_id)
        except RegistryError as exc:
            raise ProxyError(503, "registry-unavailable", str(exc)) from exc

    async def known(self, sandbox_id: str) -> Sandbox:
        sandbox = await self.lookup(sandbox_id)
        if sandbox is None:
            raise not_found(sandbox_id)
        return sandbox

    # -- credentials ----------------------------------------------------------------------
    async def _key(self, authorization: bytes | None) -> str | None:
        """`ALL_SANDBOXES` for a static key, an organization id for a tenant's key, else None."""
        if not authorization or authorization[:7].lower() != b"bearer ":
            return None
        presented = authorization[7:].strip()
        if self.auth.is_api_key(presented.decode("latin-1")):
            return ALL_SANDBOXES
        try:
            return await self.registry.key_organization(hashlib.sha256(presented).hexdigest())
        except RegistryError as exc:
            raise ProxyError(503, "registry-unavailable", str(exc)) from exc

    async def _preview(self, scope: Scope, presented: Presented, target: PreviewHost) -> Caller:
        sandbox, signed = await self._resolve_preview(target)
        key = await self._key(presented.authorization)
        reaches = key_reaches(key, sandbox)  # another organization's key does not count here at all
        via = self._preview_credential(scope, presented, sandbox, target, signed, reaches)
        if via == "cookie" and scope["type"] == "websocket":
            origin = (header(scope, b"origin") or b"").decode("latin-1").lower()
            if origin != f"{self.config.public_scheme}://{target.host}":
                raise ProxyError(403, "cross-origin-websocket",
                                 "A WebSocket authenticated by cookie must come from the preview's own origin.")
        return Caller(via, sandbox, key, reaches, presented.query)

    async def _resolve_preview(self, target: PreviewHost) -> tuple[Sandbox, bool]:
        """The sandbox a preview label names, and whether the label was a valid signed token."""
        signed = self.auth.decode_signed_label(target.label)
        if signed is not None:
            candidate = await self.lookup(signed.sandbox_id)
            if candidate is not None and self.auth.verify_signed_label(signed, candidate, target.port):
                if signed.expires_at < time.time() or target.label in candidate.revoked:
                    raise ProxyError(403, "signed-url-expired",
                                     "This signed preview URL has expired: ask for a new one.")
                return candidate, True
        sandbox = await self.lookup(target.label)
        if sandbox is None:
            if signed is not None:
                raise ProxyError(403, "invalid-signed-url",
                                 "This signed preview URL is not valid for this port, or has been altered.")
            raise not_found(target.label)
        return sandbox, False

    def _preview_credential(self, scope: Scope, presented: Presented, sandbox: Sandbox, target: PreviewHost,
                            signed: bool, key_reaches: bool) -> Via:
        if signed:
            return "signed"
        header_token, query_token = presented.header_token, presented.query_token
        if header_token is not None and self.auth.check_preview_token(sandbox, header_token.decode("latin-1")):
            return "header"
        if query_token is not None and self.auth.check_preview_token(sandbox, query_token):
            return "query"
        if key_reaches:
            return "api-key"
        cookie = presented.cookies.get(self.config.cookie_name)
        if cookie is not None and self.auth.check_cookie(cookie, sandbox, target.port):
            return "cookie"
        # Never on ports that always need credentials (the terminal, the toolbox).
        private_port = target.port in self.config.private_ports
        if sandbox.public and not private_port:
            return "public"
        if not private_port and self._sibling_preflight(scope, sandbox):
            return "preflight"
        if header_token is not None or query_token is not None:
            raise ProxyError(401, "invalid-preview-token", "The preview token is not valid for this sandbox.")
        raise ProxyError(401, "preview-auth-required",
                         "This preview is private: open it with a preview URL that carries a token "
                         f"(?{QUERY_PARAM}=...), send the X-Daytona-Preview-Token header, or use a signed "
                         "preview URL.")

    def _sibling_preflight(self, scope: Scope, sandbox: Sandbox) -> bool:
        """A CORS preflight to a private preview from a preview origin of the same sandbox.

        Browsers send preflights without credentials, so a frontend on one port calling
        its API on another (with the preview-token header, or a cookie the API's host
        set) fails at the preflight unless it gets through unauthenticated (coder/coder#5706).
        Only the app's CORS headers come back (proxy/app.py `_preflight_reply`): the app's
        policy decides, and an unauthenticated caller learns nothing else.
        """
        if scope["type"] != "http" or scope["method"] != "OPTIONS":
            return False
        origin = header(scope, b"origin")
        if origin is None or header(scope, b"access-control-request-method") is None:
            return False
        scheme, separator, host = origin.decode("latin-1").lower().partition("://")
        if not separator or scheme != self.config.public_scheme:
            return False
        source = parse_preview_host(host, self.config.domain)
        if source is None:
            return False
        if source.label == sandbox.id:
            return True
        signed = self.auth.signed_label_for(source.label, sandbox, source.port)
        return signed is not None and signed.expires_at >= time.time() and source.label not in sandbox.revoked

    async def _toolbox(self, scope: Scope, presented: Presented, target: ToolboxPath) -> Caller:
        key = await self._key(presented.authorization)
        if key is not None:
            sandbox = await self.known(target.sandbox_id)
            if not key_reaches(key, sandbox):
                # Another organization's sandbox is answered exactly like an unknown one.
                raise not_found(target.sandbox_id)
            return Caller("api-key", sandbox, key, True, presented.query)
        token = presented.header_token
        if token is None and is_signed_file_request(target.rest, presented.raw_query):
            # Daytona's signed file URL: it is the credential, for exactly this request.
            sandbox = await self.known(target.sandbox_id)
            try:
                signed_file = verify_file_url(sandbox.files_key, scope.get("method", "GET"), target.rest,
                                              presented.raw_query)
            except FileUrlError as exc:
                raise ProxyError(401, "invalid-signed-url", str(exc)) from exc
            return Caller("signed-file", sandbox, None, False, signed_file.query)
        if token is None:
            raise ProxyError(401, "toolbox-auth-required",
                             "The toolbox needs 'Authorization: Bearer <API key>' (or the sandbox's preview token).")
        sandbox = await self.known(target.sandbox_id)
        if not self.auth.check_preview_token(sandbox, token.decode("latin-1")):
            raise ProxyError(401, "invalid-preview-token", "The preview token is not valid for this sandbox.")
        return Caller("header", sandbox, None, False, presented.query)
