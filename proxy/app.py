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

import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

from starlette.types import Receive, Scope, Send

from proxy import __version__
from proxy.activity import ActivityTracker
from proxy.caches import BoundedDict
from proxy.auth import (
    PREVIEW_HEADER,
    SIGNED_MAX_SECONDS,
    SIGNED_MIN_SECONDS,
    Auth,
    SignedExpiryError,
    SignedLabelError,
)
from proxy.callers import Authenticator, Presented, ToolboxPath, not_found
from proxy.config import ProxyConfig
from proxy.cookies import filter_set_cookies, sanitize_set_cookie
from proxy.errors import ProxyError, header, send_error, wants_html
from proxy.hosts import (
    SANDBOX_ID,
    BadToolboxPath,
    PreviewHost,
    parse_preview_host,
    parse_toolbox_path,
    under_domain,
)
from proxy.metrics import Metrics
from proxy.registry import Registry, Sandbox, open_registry
from toolbox.forward.pool import UpstreamConnection
from toolbox.tasks import TaskOwner
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
_UNSEEN: Any = object()
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
        self.authenticator = Authenticator(self.auth, self.registry, config)
        self.metrics = Metrics()
        self.tasks = TaskOwner()  # the proxy's background work (toolbox/tasks.py), opened by running()
        self.activity = ActivityTracker(self.registry, self.tasks.spawn, config.activity_interval)
        self._tcp = Relay(keepalive=60.0)
        # Previews straight to a sandbox's own address (registry `address`): refused means
        # the app listens on its loopback only, so no retries here; the daemon's route then
        # does. Kept below the 5 s idle timeout apps commonly have (uvicorn, node).
        self._direct = Relay(keepalive=4.0, retry_refused=False)
        self._unix: dict[str, Relay] = {}
        self._addresses: BoundedDict[str, tuple[Relay, str, int, bytes]] = BoundedDict(10_000)
        self._hosts: BoundedDict[str, PreviewHost | None] = BoundedDict(4096)  # parsed Host headers
        self.cookie_name = config.cookie_name
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
        self._addresses[key] = result
        return result

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The proxy's lifetime (its lifespan): the task group that owns its background
        work, and what it must close, unwound in reverse however it ends."""
        async with AsyncExitStack() as stack:
            # Entered first, so it closes last: what still runs then is cancelled and awaited.
            await stack.enter_async_context(self.tasks.running())
            stack.push_async_callback(self.registry.close)
            stack.push_async_callback(self._close_relays)
            stack.push_async_callback(self.activity.flush)  # writes still running go first
            yield

    async def _close_relays(self) -> None:
        for relay in [*self._unix.values(), self._tcp, self._direct, *([self._api[0]] if self._api else [])]:
            await relay.close()
        self._unix.clear()

    def _forwarded(self, scope: Scope, host: bytes, *, drop_authorization: bool,
                   cookie: bytes | None, keep_cookie_header: bool, app_host: bytes | None = None) -> Headers:
        """The client's headers as they go upstream; `app_host` replaces Host (last)."""
        out: Headers = []
        for key, value in strip_hop_by_hop(scope["headers"]):
            if key in _DROP_UPSTREAM or (key == b"authorization" and drop_authorization):
                continue
            if key == b"host" and app_host is not None:
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
        if app_host is not None:
            out.append((b"host", app_host))
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
        """ASGI lifespan around `running()`: a failure is reported as startup.failed or
        shutdown.failed (then raised, for uvicorn to log), after what started was unwound."""
        await receive()  # lifespan.startup
        started = False
        try:
            async with self.running():
                await send({"type": "lifespan.startup.complete"})
                started = True
                await receive()  # lifespan.shutdown
        except BaseException as exc:
            phase = "shutdown" if started else "startup"
            await send({"type": f"lifespan.{phase}.failed", "message": f"{type(exc).__name__}: {exc}"})
            raise
        await send({"type": "lifespan.shutdown.complete"})

    # -- preview hosts --------------------------------------------------------------------
    async def _preview(self, scope: Scope, receive: Receive, send: Send, target: PreviewHost) -> None:
        """Resolve and authenticate (`proxy/callers.py`), then route: answered here (the
        cookie bootstrap), a bare preflight, one hop to the sandbox's own address, or
        through its daemon's `/proxy/{port}` route."""
        presented = Presented.of(scope)
        caller = await self.authenticator.authenticate(scope, presented, target)
        sandbox = caller.sandbox
        assert sandbox is not None
        if caller.via == "query" and scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            await self._bootstrap_cookie(scope, send, sandbox, target.port, caller.query)
            return
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        if caller.via == "preflight":
            await self._preflight(scope, receive, send, sandbox, target, b"/proxy/%d" % target.port + raw_path,
                                  caller.query)
            return
        host = target.host.encode()
        if sandbox.address is not None:
            # One hop: the app sees what the daemon's route would have given it.
            direct = self._forwarded(scope, host, drop_authorization=caller.key_reaches,
                                     cookie=presented.other_cookies, keep_cookie_header=False,
                                     app_host=host if self.config.preserve_host else b"localhost:%d" % target.port)
            if await self._direct_preview(scope, receive, send, sandbox, target.port, raw_path, caller.query, direct):
                return
        headers = self._forwarded(scope, host, drop_authorization=caller.key_reaches,
                                  cookie=presented.other_cookies, keep_cookie_header=False)
        if self.config.preserve_host:
            headers.append((b"x-toolbox-preserve-host", b"1"))
        await self._forward(scope, receive, send, sandbox, b"/proxy/%d" % target.port + raw_path, caller.query,
                            headers, filter_set_cookies)

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
            if not (await self.authenticator.authenticate(scope, Presented.of(scope))).operator:
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
        presented = Presented.of(scope)
        caller = await self.authenticator.authenticate(scope, presented, ToolboxPath(sandbox_id, rest))
        assert caller.sandbox is not None
        # The proxy's credentials never reach the sandbox (its /proxy/{port} routes hand
        # requests to the app): neither its cookies nor the query token; a signed file
        # URL's request carries no cookies at all.
        headers = self._forwarded(scope, (header(scope, b"host") or b""),
                                  drop_authorization=caller.key_reaches or caller.via == "signed-file",
                                  cookie=None if caller.via == "signed-file" else presented.other_cookies,
                                  keep_cookie_header=False)
        await self._forward(scope, receive, send, caller.sandbox, rest, caller.query, headers,
                            _toolbox_filter(b"/toolbox/" + sandbox_id.encode()))

    async def _mint(self, scope: Scope, send: Send, sandbox_id: str, port_text: str, kind: str) -> None:
        caller = await self.authenticator.authenticate(scope, Presented.of(scope))
        if caller.key is None:
            raise ProxyError(401, "api-key-required", "Minting preview URLs needs 'Authorization: Bearer <API key>'.")
        if not SANDBOX_ID.fullmatch(sandbox_id):
            raise ProxyError(400, "invalid-sandbox-id", f"'{sandbox_id}' is not a valid sandbox id.")
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ProxyError(400, "invalid-port", "The port must be a number from 1 to 65535.")
        port = int(port_text)
        sandbox = await self.authenticator.known(sandbox_id)
        if not caller.reaches(sandbox):
            raise not_found(sandbox_id)
        if kind == "preview-url":
            payload: dict[str, object] = {"sandboxId": sandbox.id, "url": self.config.preview_url(sandbox.id, port),
                       "token": self.auth.preview_token(sandbox)}
            await _respond(send, *_json(200, payload))
            return
        query = dict(_parse_query(scope.get("query_string", b"")))
        expires_text = query.get("expiresInSeconds", "60")
        try:
            if not expires_text.isdigit() or len(expires_text) > 12:
                raise SignedExpiryError(f"expiresInSeconds must be a whole number from {SIGNED_MIN_SECONDS} to "
                                        f"{SIGNED_MAX_SECONDS}, got {expires_text!r}")
            token = self.auth.sign_preview(sandbox, port, int(expires_text))
        except SignedExpiryError as exc:
            raise ProxyError(400, "invalid-expiry", str(exc)) from exc
        except SignedLabelError as exc:
            raise ProxyError(400, "sandbox-id-too-long", str(exc)) from exc
        payload = {"sandboxId": sandbox.id, "port": port, "token": token, "url": self.config.preview_url(token, port)}
        await _respond(send, *_json(200, payload))


def _direct_filter(headers: Headers) -> Headers:
    """As the daemon's route does: only the proxy may say an error is its own, and an app
    never sets the proxy's cookies. One pass; names arrive lowercased (strip_hop_by_hop)."""
    out: Headers = []
    for key, value in headers:
        if key == b"set-cookie":
            cleaned = sanitize_set_cookie(value)
            if cleaned is not None:
                out.append((key, cleaned))
        elif key != b"x-proxy-error":
            out.append((key, value))
    return out


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
