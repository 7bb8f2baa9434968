"""The proxy's ASGI application (pure ASGI: nothing buffers a proxied body).

Host `{port}-{label}.{domain}`      -> daemon `/proxy/{port}{path}` (preview)
Other hosts (bare domain, IP, LB):
  `/api/{path}`                     -> the control plane (`--api-upstream`), path unchanged
  `/toolbox/{id}/{path}`            -> daemon `/{path}` (API key or preview token)
  `GET /health`, `GET /metrics`
  `GET /sandbox/{id}/ports/{port}/preview-url`           (API key) Daytona's PortPreviewUrl
  `GET /sandbox/{id}/ports/{port}/signed-preview-url`    (API key) Daytona's SignedPortPreviewUrl
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from starlette.types import Receive, Scope, Send

from proxy import __version__
from proxy.activity import ActivityTracker
from proxy.auth import (
    COOKIE_HTTP,
    COOKIE_HTTPS,
    PREVIEW_HEADER,
    QUERY_PARAM,
    SIGNED_MAX_SECONDS,
    SIGNED_MIN_SECONDS,
    Auth,
    SignedLabelError,
    split_cookies,
    strip_query_param,
)
from proxy.config import ProxyConfig
from proxy.cookies import filter_set_cookies
from proxy.errors import ProxyError, header, send_error, wants_html
from proxy.fileurls import FileUrlError, is_signed_file_request
from proxy.fileurls import verify as verify_file_url
from proxy.hosts import (
    SANDBOX_ID,
    BadToolboxPath,
    PreviewHost,
    parse_preview_host,
    parse_toolbox_path,
    under_domain,
)
from proxy.metrics import Metrics
from proxy.registry import Registry, RegistryError, Sandbox, open_registry
from toolbox.forward.pool import UpstreamConnection
from toolbox.forward.relay import (
    Headers,
    Relay,
    Target,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
    UpstreamUnknownHost,
    strip_hop_by_hop,
)

# Client-sent values of these never reach a sandbox: the proxy sets its own or none.
_DROP_UPSTREAM = frozenset({
    b"forwarded", b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto", b"x-forwarded-port",
    b"x-forwarded-prefix", b"x-real-ip", PREVIEW_HEADER, b"x-toolbox-preserve-host",
})
_MINT = re.compile(r"/sandbox/([^/]+)/ports/([^/]+)/(preview-url|signed-preview-url)")
_QUERY_PARAM_BYTES = QUERY_PARAM.encode()
_UNSEEN: Any = object()
ALL_SANDBOXES = "*all*"  # what a static (PROXY_API_KEYS) key may reach
# X-Proxy-Error codes the daemon's /proxy/{port} route emits.
_DAEMON_ERRORS = frozenset({"port-not-open", "invalid-port", "upstream-rejected-websocket", "upstream-timeout"})


# An unauthenticated preflight always gets this status: the app's own (or the daemon's
# "port not open") would tell a stranger which ports answer.
PREFLIGHT_STATUS = 204
_PREFLIGHT_EMPTY: Headers = [(b"vary", b"origin"), (b"content-length", b"0")]


def _preflight_reply(send: Send) -> Callable[[UpstreamConnection], Awaitable[bool]]:
    """Answer an unauthenticated preflight with a fixed status and, when the app accepted
    it, the app's CORS headers; nothing else of the app's answer."""

    async def reply(response: UpstreamConnection) -> bool:
        if response.status >= 400:
            await _respond(send, PREFLIGHT_STATUS, _PREFLIGHT_EMPTY, b"")
            return True
        kept = [(name, value) for name, value in ((k.lower(), v) for k, v in response.headers)
                if name.startswith(b"access-control-") or name == b"vary"]
        await _respond(send, PREFLIGHT_STATUS, [*kept, (b"content-length", b"0")], b"")
        return True

    return reply


def _preflight_headers(scope: Scope) -> Headers:
    """What of a preflight reaches the app: its host, origin and what it asks for."""
    return [(k, v) for k, v in scope["headers"]
            if k in (b"host", b"origin") or k.startswith(b"access-control-request-")]


def _toolbox_filter(prefix: bytes) -> Callable[[Headers], Headers]:
    rewrite = _location_rewriter(prefix)
    return lambda headers: filter_set_cookies(rewrite(headers))


def _json(status: int, payload: object) -> tuple[int, Headers, bytes]:
    body = json.dumps(payload).encode()
    return status, [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())], body


async def _respond(send: Send, status: int, headers: Headers, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ProxyApp:
    def __init__(self, config: ProxyConfig, registry: Registry | None = None) -> None:
        self.config = config
        self.registry = registry or open_registry(config.registry, config.cache_ttl)
        self.auth = Auth(config.secret, config.api_keys)
        self.metrics = Metrics()
        self.activity = ActivityTracker(self.registry, config.activity_interval)
        self._tcp = Relay(keepalive=60.0)
        # Previews straight to a sandbox's own address (registry `address`): refused means
        # the app listens on its loopback only, so no retries here; the daemon's route then
        # does. Kept below the 5 s idle timeout apps commonly have (uvicorn, node).
        self._direct = Relay(keepalive=4.0, retry_refused=False)
        self._unix: dict[str, Relay] = {}
        self._addresses: dict[str, tuple[Relay, str, int, bytes]] = {}
        self._hosts: dict[str, PreviewHost | None] = {}  # parsed Host headers, bounded
        https = config.public_scheme == "https"
        self.cookie_name = COOKIE_HTTPS if https else COOKIE_HTTP
        self._xf_proto = config.public_scheme.encode()
        self._xf_port = str(config.public_port).encode()
        self._api: tuple[Relay, str, int, bytes] | None = None
        if config.api_upstream:
            if config.api_upstream.startswith("unix:"):
                self._api = (Relay(unix_path=config.api_upstream[len("unix:"):], keepalive=60.0), "localhost", 0, b"")
            else:
                parts = urlsplit(config.api_upstream)
                self._api = (Relay(keepalive=60.0), parts.hostname or "", parts.port or 80,
                             parts.path.rstrip("/").encode())

    # -- plumbing -------------------------------------------------------------------------
    def _upstream(self, address: str, peer_uid: int | None = None) -> tuple[Relay, str, int, bytes]:
        """(relay, host, port, path prefix) of a daemon address; a Unix socket's relay
        refuses a listener that does not run as `peer_uid` (when the registry names one)."""
        key = address if peer_uid is None else f"{address}\0{peer_uid}"
        cached = self._addresses.get(key)
        if cached is not None:
            return cached
        if address.startswith("unix:"):
            path = address[len("unix:"):]
            relay = self._unix.get(key)
            if relay is None:
                relay = self._unix[key] = Relay(unix_path=path, keepalive=60.0, peer_uid=peer_uid)
            result = (relay, "localhost", 0, b"")
        else:
            parts = urlsplit(address)
            # The daemon keeps connections 75 s; reuse them for 60.
            result = (self._tcp, parts.hostname or "", parts.port or 80, parts.path.rstrip("/").encode())
        if len(self._addresses) > 10_000:
            self._addresses.clear()
        self._addresses[key] = result
        return result

    async def close(self) -> None:
        await self.activity.flush()
        for relay in [*self._unix.values(), self._tcp, self._direct, *([self._api[0]] if self._api else [])]:
            await relay.close()
        self._unix.clear()
        await self.registry.close()

    async def _lookup(self, sandbox_id: str) -> Sandbox | None:
        try:
            return await self.registry.get(sandbox_id)
        except RegistryError as exc:
            raise ProxyError(503, "registry-unavailable", str(exc)) from exc

    @staticmethod
    def _not_found(sandbox_id: str) -> ProxyError:
        return ProxyError(404, "sandbox-not-found",
                          f"No sandbox '{sandbox_id}' is registered with this proxy: it may have been "
                          "deleted or not started yet.")

    async def _known(self, sandbox_id: str) -> Sandbox:
        sandbox = await self._lookup(sandbox_id)
        if sandbox is None:
            raise self._not_found(sandbox_id)
        return sandbox

    async def _key_access(self, authorization: bytes | None) -> str | None:
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

    @staticmethod
    def _key_reaches(access: str | None, sandbox: Sandbox) -> bool:
        if access is None:
            return False
        return access is ALL_SANDBOXES or sandbox.organization is None or access == sandbox.organization

    def _forwarded(self, scope: Scope, host: bytes, *, drop_authorization: bool,
                   cookie: bytes | None, keep_cookie_header: bool) -> Headers:
        out: Headers = []
        for key, value in strip_hop_by_hop(scope["headers"]):
            if key in _DROP_UPSTREAM or (key == b"authorization" and drop_authorization):
                continue
            if key == b"cookie" and not keep_cookie_header:
                continue  # replaced below by the jar without the proxy's cookies
            out.append((key, value))
        if cookie and not keep_cookie_header:
            out.append((b"cookie", cookie))
        client = scope.get("client")
        if client:
            out.append((b"x-forwarded-for", client[0].encode()))
        out += [(b"x-forwarded-host", host), (b"x-forwarded-proto", self._xf_proto),
                (b"x-forwarded-port", self._xf_port)]
        return out

    # -- entry ----------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if kind == "websocket":
            await receive()  # websocket.connect: answered by accept or by a denial response
        host = (header(scope, b"host") or b"").decode("latin-1")
        try:
            preview = self._hosts.get(host, _UNSEEN)
            if preview is _UNSEEN:
                preview = parse_preview_host(host, self.config.domain)
                if len(self._hosts) >= 4096:
                    self._hosts.clear()
                self._hosts[host] = preview
            if preview is not None:
                self.metrics.requests["preview"] += 1
                await self._preview(scope, receive, send, preview)
            elif under_domain(host, self.config.domain):
                self.metrics.requests["invalid"] += 1
                raise ProxyError(404, "invalid-preview-host",
                                 f"'{host}' is not a preview host: use {{port}}-{{sandboxId}}.{self.config.domain}")
            else:
                await self._bare(scope, receive, send)
        except ProxyError as error:
            self.metrics.errors[error.code] += 1
            await send_error(scope, send, error)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- preview hosts --------------------------------------------------------------------
    async def _resolve_preview(self, target: PreviewHost) -> tuple[Sandbox, bool]:
        """The sandbox a preview label names, and whether the label was a valid signed token."""
        signed = self.auth.decode_signed_label(target.label)
        if signed is not None:
            candidate = await self._lookup(signed.sandbox_id)
            if candidate is not None and self.auth.verify_signed_label(signed, candidate, target.port):
                if signed.expires_at < time.time() or target.label in candidate.revoked:
                    raise ProxyError(403, "signed-url-expired",
                                     "This signed preview URL has expired: ask for a new one.")
                return candidate, True
        sandbox = await self._lookup(target.label)
        if sandbox is None:
            if signed is not None:
                raise ProxyError(403, "invalid-signed-url",
                                 "This signed preview URL is not valid for this port, or has been altered.")
            await self._known(target.label)
        assert sandbox is not None
        return sandbox, False

    async def _preview(self, scope: Scope, receive: Receive, send: Send, target: PreviewHost) -> None:
        sandbox, signed = await self._resolve_preview(target)
        query: bytes = scope.get("query_string", b"")
        query_token: str | None = None
        if _QUERY_PARAM_BYTES in query:
            query, query_token = strip_query_param(query, QUERY_PARAM)
        cookie_header = header_token = authorization = None
        for key, value in scope["headers"]:
            if key == b"cookie":
                cookie_header = value if cookie_header is None else cookie_header + b"; " + value
            elif key == PREVIEW_HEADER:
                header_token = value
            elif key == b"authorization":
                authorization = value
        cookies, other_cookies = split_cookies(cookie_header) if cookie_header else ({}, None)
        # Another organization's key does not count here at all.
        api_key = self._key_reaches(await self._key_access(authorization), sandbox)

        via: str | None = "signed" if signed else None
        if via is None and header_token is not None and self.auth.check_preview_token(sandbox, header_token.decode("latin-1")):
            via = "header"
        if via is None and query_token is not None and self.auth.check_preview_token(sandbox, query_token):
            via = "query"
        if via is None and api_key:
            via = "api-key"
        if via is None:
            value = cookies.get(self.cookie_name)
            if value is not None and self.auth.check_cookie(value, sandbox, target.port):
                via = "cookie"
        if via is None and (not sandbox.public or target.port in self.config.private_ports):
            # Never on ports that always need credentials (the terminal, the toolbox).
            if target.port not in self.config.private_ports and self._sibling_preflight(scope, sandbox):
                via = "preflight"
            elif header_token is not None or query_token is not None:
                raise ProxyError(401, "invalid-preview-token", "The preview token is not valid for this sandbox.")
            else:
                raise ProxyError(401, "preview-auth-required",
                                 "This preview is private: open it with a preview URL that carries a token "
                                 f"(?{QUERY_PARAM}=...), send the X-Daytona-Preview-Token header, or use a signed "
                                 "preview URL.")

        if via == "query" and scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            await self._bootstrap_cookie(scope, send, sandbox, target.port, query)
            return
        if via == "cookie" and scope["type"] == "websocket":
            origin = (header(scope, b"origin") or b"").decode("latin-1").lower()
            if origin != f"{self.config.public_scheme}://{target.host}":
                raise ProxyError(403, "cross-origin-websocket",
                                 "A WebSocket authenticated by cookie must come from the preview's own origin.")

        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        path = b"/proxy/%d" % target.port + raw_path
        if via == "preflight":
            await self._preflight(scope, receive, send, sandbox, target, path, query)
            return
        headers = self._forwarded(scope, target.host.encode(), drop_authorization=api_key,
                                  cookie=other_cookies, keep_cookie_header=False)
        if sandbox.address is not None:
            # One hop: the app sees what the daemon's route would have given it.
            direct = [*(h for h in headers if h[0] != b"host"),
                      (b"host", target.host.encode() if self.config.preserve_host else b"localhost:%d" % target.port)]
            if await self._direct_preview(scope, receive, send, sandbox, target.port, raw_path, query, direct):
                return
        if self.config.preserve_host:
            headers.append((b"x-toolbox-preserve-host", b"1"))
        await self._forward(scope, receive, send, sandbox, path, query, headers, filter_set_cookies)

    async def _direct_preview(self, scope: Scope, receive: Receive, send: Send, sandbox: Sandbox, port: int,
                              raw_path: bytes, query: bytes, headers: Headers) -> bool:
        """Relay a preview to sandbox address:port; False (nothing sent, nothing read) when
        the port refuses there, so the caller falls back to the daemon's /proxy route."""
        assert sandbox.address is not None
        relay = self._direct
        touch = self.activity.toucher(sandbox.id)
        touch()
        target = Target(relay.pool, sandbox.address, port, raw_path + (b"?" + query if query else b""))
        try:
            if scope["type"] == "websocket":
                self.metrics.websockets_open += 1
                try:
                    await relay.websocket(scope, send, target, headers, on_traffic=touch,
                                          response_headers_filter=_direct_filter)
                finally:
                    self.metrics.websockets_open -= 1
                return True
            await relay.http(scope, receive, send, target, headers, _direct_filter, on_traffic=touch,
                             intercept=self._timer())
            return True
        except UpstreamTimeout as exc:
            raise ProxyError(504, "upstream-timeout", f"The sandbox did not answer the WebSocket upgrade ({exc.reason}).") from exc
        except UpstreamUnavailable as exc:
            if exc.reason == "connection refused":
                return False  # refused at connect: nothing was sent or read yet
            raise ProxyError(502, "sandbox-unreachable",
                             f"The app on port {port} in sandbox '{sandbox.id}' dropped the connection "
                             f"({exc.reason}).") from exc
        except UpstreamRejected as exc:
            raise ProxyError(exc.status if 400 <= exc.status < 600 else 502, "websocket-rejected",
                             f"The sandbox refused the WebSocket upgrade with status {exc.status}.") from exc

    async def _preflight(self, scope: Scope, receive: Receive, send: Send, sandbox: Sandbox, target: PreviewHost,
                         path: bytes, query: bytes) -> None:
        """Relay an unauthenticated sibling preflight: no body, no cookies or other headers,
        and the same status whether the app, the daemon or nothing answered."""
        headers = _preflight_headers(scope)
        # No framing headers in the scope either: the relay then sends no body at all.
        bare = {**scope, "headers": headers}
        headers += [(b"x-forwarded-host", target.host.encode()), (b"x-forwarded-proto", self._xf_proto),
                    (b"x-forwarded-port", self._xf_port)]
        if self.config.preserve_host:
            headers.append((b"x-toolbox-preserve-host", b"1"))
        try:
            await self._forward(bare, receive, send, sandbox, path, query, headers, None, preflight=True)
        except ProxyError:
            await _respond(send, PREFLIGHT_STATUS, _PREFLIGHT_EMPTY, b"")

    def _sibling_preflight(self, scope: Scope, sandbox: Sandbox) -> bool:
        """A CORS preflight to a private preview from a preview origin of the same sandbox.

        Browsers send preflights without credentials, so a frontend on one port calling
        its API on another (with the preview-token header, or a cookie the API's host
        set) fails at the preflight unless it gets through unauthenticated (coder/coder#5706).
        Only the app's CORS headers come back (`_preflight_reply`): the app's policy
        decides, and an unauthenticated caller learns nothing else.
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
        signed = self.auth.decode_signed_label(source.label)
        return (signed is not None and signed.sandbox_id == sandbox.id and signed.expires_at >= time.time()
                and source.label not in sandbox.revoked and self.auth.verify_signed_label(signed, sandbox, source.port))

    async def _bootstrap_cookie(self, scope: Scope, send: Send, sandbox: Sandbox, port: int, query: bytes) -> None:
        """Swap the query token for a host-only cookie and send the browser to the clean URL."""
        expires_at = int(time.time()) + self.config.cookie_max_age
        value = self.auth.cookie_value(sandbox, port, expires_at)
        cookie = f"{self.cookie_name}={value}; Path=/; Max-Age={self.config.cookie_max_age}; HttpOnly"
        if self.config.cookie_samesite == "none":
            # Embedded previews: sent in cross-site iframes, but Partitioned (CHIPS), so it
            # is kept per embedding site and a page on another site never carries it.
            cookie += "; SameSite=None; Secure; Partitioned"
        else:
            cookie += "; SameSite=Lax" + ("; Secure" if self.config.public_scheme == "https" else "")
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        location = raw_path + (b"?" + query if query else b"")
        await _respond(send, 302, [(b"location", location), (b"set-cookie", cookie.encode()),
                                   (b"cache-control", b"no-store"), (b"referrer-policy", b"no-referrer"),
                                   (b"content-length", b"0")], b"")

    async def _forward(self, scope: Scope, receive: Receive, send: Send, sandbox: Sandbox, path: bytes,
                       query: bytes, headers: Headers, filter_: Callable[[Headers], Headers] | None, *,
                       preflight: bool = False) -> None:
        relay, host, port, prefix = self._upstream(sandbox.url, sandbox.uid)
        touch = self.activity.toucher(sandbox.id)
        touch()
        target = Target(relay.pool, host, port, prefix + path + (b"?" + query if query else b""))
        try:
            if scope["type"] == "websocket":
                self.metrics.websockets_open += 1
                try:
                    await relay.websocket(scope, send, target, headers, on_traffic=touch, response_headers_filter=filter_)
                finally:
                    self.metrics.websockets_open -= 1
                return
            intercept = _preflight_reply(send) if preflight else self._interceptor_for(scope, send)
            await relay.http(scope, receive, send, target, headers, filter_, on_traffic=touch, intercept=intercept)
        except UpstreamUnknownHost as exc:
            # A template registry cannot know ids; an address that does not resolve means none.
            raise ProxyError(404, "sandbox-not-found",
                             f"No sandbox '{sandbox.id}' is reachable here ({exc.reason}).") from exc
        except UpstreamTimeout as exc:
            raise ProxyError(504, "upstream-timeout", f"The sandbox did not answer the WebSocket upgrade ({exc.reason}).") from exc
        except UpstreamUnavailable as exc:
            raise ProxyError(502, "sandbox-unreachable",
                             f"The sandbox '{sandbox.id}' is registered but its daemon does not answer "
                             f"({exc.reason}); it may be stopped or still starting.") from exc
        except UpstreamRejected as exc:
            raise ProxyError(exc.status if 400 <= exc.status < 600 else 502, "websocket-rejected",
                             f"The sandbox refused the WebSocket upgrade with status {exc.status}.") from exc

    def _timer(self) -> Callable[[UpstreamConnection], Awaitable[bool]]:
        """Upstream latency only: an app's own X-Proxy-Error means nothing to the proxy."""
        started = time.perf_counter()
        metrics = self.metrics

        async def observe(response: UpstreamConnection) -> bool:
            metrics.observe_upstream(time.perf_counter() - started)
            return False

        return observe

    def _interceptor_for(self, scope: Scope, send: Send) -> Callable[[UpstreamConnection], Awaitable[bool]]:
        started = time.perf_counter()
        metrics = self.metrics

        async def intercept(response: UpstreamConnection) -> bool:
            metrics.observe_upstream(time.perf_counter() - started)
            if response.status < 400:
                return False
            code = next((v.decode("latin-1") for k, v in response.headers if k.lower() == b"x-proxy-error"), None)
            if code is None:
                return False
            # The daemon runs inside the sandbox: never let it invent metric labels.
            code = code if code in _DAEMON_ERRORS else "upstream-error"
            metrics.errors[code] += 1
            if not wants_html(scope):
                return False
            # The daemon's own error (port not open, ...): a page for people, same code.
            body = b""
            try:
                while len(body) < 65536 and (chunk := await response.next_chunk()) is not None:
                    body += chunk
                message = json.loads(body).get("message", "")
            except (ValueError, AttributeError, ConnectionError):
                message = ""
            await send_error(scope, send, ProxyError(response.status, code, message or code))
            return True

        return intercept

    # -- bare-domain routes ---------------------------------------------------------------
    async def _bare(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        if self._api is not None and (raw_path == b"/api" or raw_path.startswith(b"/api/")):
            self.metrics.requests["api"] += 1
            await self._control_plane(scope, receive, send, raw_path)
            return
        if raw_path.startswith(b"/toolbox/"):
            self.metrics.requests["toolbox"] += 1
            await self._toolbox(scope, receive, send, raw_path)
            return
        self.metrics.requests["other"] += 1
        path: str = scope["path"]
        if scope["type"] != "http":
            raise ProxyError(404, "not-found", "No WebSocket route here.")
        method = scope["method"]
        if path == "/health" and method in ("GET", "HEAD"):
            await _respond(send, *_json(200, {"status": "ok", "version": __version__}))
            return
        if path == "/metrics" and method in ("GET", "HEAD"):
            # It names every sandbox: for operators (and the runtime's idle check) only.
            if not self.auth.bearer_is_api_key(header(scope, b"authorization")):
                raise ProxyError(401, "api-key-required", "/metrics needs 'Authorization: Bearer <API key>'.")
            body = self.metrics.render(self.activity.last_seen)
            await _respond(send, 200, [(b"content-type", b"text/plain; version=0.0.4"),
                                       (b"content-length", str(len(body)).encode())], body)
            return
        match = _MINT.fullmatch(path)
        if match and method == "GET":
            await self._mint(scope, send, *match.groups())
            return
        raise ProxyError(404, "not-found",
                         f"Nothing at {path} on the proxy's own host: previews live at "
                         f"{{port}}-{{sandboxId}}.{self.config.domain}, the toolbox at /toolbox/{{sandboxId}}/...")

    async def _control_plane(self, scope: Scope, receive: Receive, send: Send, raw_path: bytes) -> None:
        """Daytona's REST API (and its Socket.IO): the control plane authenticates itself."""
        assert self._api is not None
        relay, host, port, prefix = self._api
        headers = self._forwarded(scope, header(scope, b"host") or b"", drop_authorization=False, cookie=None,
                                  keep_cookie_header=True)
        query: bytes = scope.get("query_string", b"")
        target = Target(relay.pool, host, port, prefix + raw_path + (b"?" + query if query else b""))
        try:
            if scope["type"] == "websocket":
                self.metrics.websockets_open += 1
                try:
                    await relay.websocket(scope, send, target, headers)
                finally:
                    self.metrics.websockets_open -= 1
                return
            await relay.http(scope, receive, send, target, headers)
        except UpstreamTimeout as exc:
            raise ProxyError(504, "api-timeout", f"The control plane did not answer ({exc.reason}).") from exc
        except UpstreamUnavailable as exc:
            raise ProxyError(502, "api-unavailable",
                             f"The control plane does not answer ({exc.reason}); is the main job running?") from exc
        except UpstreamRejected as exc:
            raise ProxyError(exc.status if 400 <= exc.status < 600 else 502, "websocket-rejected",
                             f"The control plane refused the WebSocket upgrade with status {exc.status}.") from exc

    async def _toolbox(self, scope: Scope, receive: Receive, send: Send, raw_path: bytes) -> None:
        try:
            sandbox_id, rest = parse_toolbox_path(raw_path)
        except BadToolboxPath as exc:
            raise ProxyError(400, "invalid-toolbox-path", str(exc)) from exc
        access = await self._key_access(header(scope, b"authorization"))
        api_key = access is not None
        query: bytes = scope.get("query_string", b"")
        if not api_key and header(scope, PREVIEW_HEADER) is None and is_signed_file_request(rest, query):
            # Daytona's signed file URL: it is the credential, for exactly this request.
            sandbox = await self._known(sandbox_id)
            try:
                signed_file = verify_file_url(sandbox.files_key, scope.get("method", "GET"), rest, query)
            except FileUrlError as exc:
                raise ProxyError(401, "invalid-signed-url", str(exc)) from exc
            headers = self._forwarded(scope, (header(scope, b"host") or b""), drop_authorization=True,
                                      cookie=None, keep_cookie_header=False)
            await self._forward(scope, receive, send, sandbox, rest, signed_file.query, headers,
                                _toolbox_filter(b"/toolbox/" + sandbox_id.encode()))
            return
        if not api_key:
            token = header(scope, PREVIEW_HEADER)
            if token is None:
                raise ProxyError(401, "toolbox-auth-required",
                                 "The toolbox needs 'Authorization: Bearer <API key>' (or the sandbox's preview token).")
            sandbox = await self._known(sandbox_id)
            if not self.auth.check_preview_token(sandbox, token.decode("latin-1")):
                raise ProxyError(401, "invalid-preview-token", "The preview token is not valid for this sandbox.")
        else:
            sandbox = await self._known(sandbox_id)
            if not self._key_reaches(access, sandbox):
                # Another organization's sandbox is answered exactly like an unknown one.
                raise self._not_found(sandbox_id)
        # The proxy's credentials never reach the sandbox (its /proxy/{port} routes hand
        # requests to the app): neither its cookies nor the query token.
        cookie_header = b"; ".join(v for k, v in scope["headers"] if k == b"cookie")
        other_cookies = split_cookies(cookie_header)[1] if cookie_header else None
        if _QUERY_PARAM_BYTES in query:
            query = strip_query_param(query, QUERY_PARAM)[0]
        headers = self._forwarded(scope, (header(scope, b"host") or b""), drop_authorization=api_key,
                                  cookie=other_cookies, keep_cookie_header=False)
        await self._forward(scope, receive, send, sandbox, rest, query, headers,
                            _toolbox_filter(b"/toolbox/" + sandbox_id.encode()))

    async def _mint(self, scope: Scope, send: Send, sandbox_id: str, port_text: str, kind: str) -> None:
        access = await self._key_access(header(scope, b"authorization"))
        if access is None:
            raise ProxyError(401, "api-key-required", "Minting preview URLs needs 'Authorization: Bearer <API key>'.")
        if not SANDBOX_ID.fullmatch(sandbox_id):
            raise ProxyError(400, "invalid-sandbox-id", f"'{sandbox_id}' is not a valid sandbox id.")
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ProxyError(400, "invalid-port", "The port must be a number from 1 to 65535.")
        port = int(port_text)
        sandbox = await self._known(sandbox_id)
        if not self._key_reaches(access, sandbox):
            raise self._not_found(sandbox_id)
        if kind == "preview-url":
            payload: dict[str, object] = {"sandboxId": sandbox.id, "url": self.config.preview_url(sandbox.id, port),
                       "token": self.auth.preview_token(sandbox)}
            await _respond(send, *_json(200, payload))
            return
        query = dict(_parse_query(scope.get("query_string", b"")))
        expires_text = query.get("expiresInSeconds", "60")
        if not expires_text.isdigit() or not SIGNED_MIN_SECONDS <= int(expires_text) <= SIGNED_MAX_SECONDS:
            raise ProxyError(400, "invalid-expiry",
                             f"expiresInSeconds must be a whole number from {SIGNED_MIN_SECONDS} to {SIGNED_MAX_SECONDS}.")
        try:
            token = self.auth.mint_signed_label(sandbox, port, int(time.time()) + int(expires_text))
        except SignedLabelError as exc:
            raise ProxyError(400, "sandbox-id-too-long", str(exc)) from exc
        payload = {"sandboxId": sandbox.id, "port": port, "token": token, "url": self.config.preview_url(token, port)}
        await _respond(send, *_json(200, payload))


def _direct_filter(headers: Headers) -> Headers:
    # As the daemon's route does: only the proxy may say an error is its own, and an app
    # never sets the proxy's cookies.
    return filter_set_cookies([(k, v) for k, v in headers if k.lower() != b"x-proxy-error"])


def _parse_query(query: bytes) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl

    return parse_qsl(query.decode("latin-1"))


def _location_rewriter(prefix: bytes) -> Callable[[Headers], Headers]:
    """Toolbox path mode: root-relative redirects stay under /toolbox/{id}; absolute ones are untouched."""

    def rewrite(headers: Headers) -> Headers:
        out: Headers = []
        for key, value in headers:
            if key == b"location" and value.startswith(b"/") and not value.startswith((b"//", b"/\\", prefix + b"/")):
                value = prefix + value
            out.append((key, value))
        return out

    return rewrite


def app_from_environment() -> ProxyApp:
    """uvicorn factory for `--workers N`: every worker reads the options the CLI exported."""
    return ProxyApp(ProxyConfig.from_environment())
