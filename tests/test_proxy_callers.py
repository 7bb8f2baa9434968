"""`Authenticator.authenticate()`, the proxy's one credential check, on its own: which
credential wins, and what each refusal is (the end-to-end tests are test_proxy_auth.py)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest

from proxy.auth import Auth
from proxy.callers import ALL_SANDBOXES, Authenticator, Caller, Presented, ToolboxPath
from proxy.config import ProxyConfig
from proxy.errors import ProxyError
from proxy.hosts import PreviewHost
from proxy.registry import FileRegistry

DOMAIN = "preview.test"
TENANT_KEY = "tenant-key"


@pytest.fixture
def authenticator(tmp_path: Path) -> Authenticator:
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps({
        "sandboxes": {
            "priv": {"url": "http://127.0.0.1:1", "token": "priv-token", "organization": "org-a"},
            "pub": {"url": "http://127.0.0.1:1", "public": True, "organization": "org-b"},
        },
        "api_keys": {hashlib.sha256(TENANT_KEY.encode()).hexdigest(): "org-a"},
    }))
    config = ProxyConfig(domain=DOMAIN, registry=f"file:{registry}", api_keys=("static-key",), secret=b"s")
    return Authenticator(Auth(config.secret, config.api_keys), FileRegistry(str(registry)), config)


def _scope(headers: dict[str, str] | None = None, query: str = "", kind: str = "http",
           method: str = "GET") -> dict[str, object]:
    return {"type": kind, "method": method, "query_string": query.encode(),
            "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]}


def _call(authenticator: Authenticator, scope: dict[str, object],
          resource: PreviewHost | ToolboxPath | None = None) -> Caller:
    return asyncio.run(authenticator.authenticate(scope, Presented.of(scope), resource))


def _preview(label: str, port: int = 3000) -> PreviewHost:
    return PreviewHost(port, label, f"{port}-{label}.{DOMAIN}")


def test_the_first_credential_that_holds_wins(authenticator: Authenticator) -> None:
    host = _preview("priv")
    token = {"X-Daytona-Preview-Token": "priv-token"}
    key = {"Authorization": f"Bearer {TENANT_KEY}"}
    assert _call(authenticator, _scope(token), host).via == "header"
    assert _call(authenticator, _scope(query="DAYTONA_SANDBOX_AUTH_KEY=priv-token&a=1"), host).via == "query"
    both = _call(authenticator, _scope({**token, **key}), host)
    assert both.via == "header" and both.key_reaches  # the key is still the proxy's: dropped upstream
    assert _call(authenticator, _scope(key), host).via == "api-key"
    assert _call(authenticator, _scope(query="DAYTONA_SANDBOX_AUTH_KEY=x&a=1"), _preview("pub")).query == b"a=1"
    assert _call(authenticator, _scope(), _preview("pub")).via == "public"
    cookie = authenticator.auth.cookie_value(asyncio.run(authenticator.known("priv")), 3000, 2**31)
    assert _call(authenticator, _scope({"Cookie": f"a=1; sbx-preview-auth={cookie}"}), host).via == "cookie"


def test_refusals(authenticator: Authenticator) -> None:
    def refused(scope: dict[str, object], resource: PreviewHost | ToolboxPath) -> tuple[int, str]:
        with pytest.raises(ProxyError) as error:
            _call(authenticator, scope, resource)
        return error.value.status, error.value.code

    assert refused(_scope(), _preview("priv")) == (401, "preview-auth-required")
    assert refused(_scope({"X-Daytona-Preview-Token": "wrong"}), _preview("priv")) == (401, "invalid-preview-token")
    assert refused(_scope(), _preview("pub", 2280)) == (401, "preview-auth-required")  # a private port
    assert refused(_scope(), _preview("nope")) == (404, "sandbox-not-found")
    # Another organization's key is no credential on a preview, and an unknown id on the toolbox.
    other = {"Authorization": f"Bearer {TENANT_KEY}"}
    assert refused(_scope(other), _preview("pub", 2280)) == (401, "preview-auth-required")
    assert refused(_scope(other), ToolboxPath("pub", b"/version")) == (404, "sandbox-not-found")
    assert refused(_scope(), ToolboxPath("priv", b"/version")) == (401, "toolbox-auth-required")
    # A cookie opens a WebSocket only from the preview's own origin.
    cookie = authenticator.auth.cookie_value(asyncio.run(authenticator.known("priv")), 3000, 2**31)
    socket = _scope({"Cookie": f"sbx-preview-auth={cookie}", "Origin": "http://evil.example"}, kind="websocket")
    assert refused(socket, _preview("priv")) == (403, "cross-origin-websocket")


def test_the_proxys_own_routes(authenticator: Authenticator) -> None:
    static = _call(authenticator, _scope({"Authorization": "Bearer static-key"}))
    assert static.operator and static.key is ALL_SANDBOXES
    tenant = _call(authenticator, _scope({"Authorization": f"Bearer {TENANT_KEY}"}))
    assert not tenant.operator and tenant.key == "org-a" and tenant.via == "api-key"
    assert tenant.reaches(asyncio.run(authenticator.known("priv")))
    assert not tenant.reaches(asyncio.run(authenticator.known("pub")))
    assert _call(authenticator, _scope({"Authorization": "Basic c3RhdGljLWtleQ=="})).via == "none"

