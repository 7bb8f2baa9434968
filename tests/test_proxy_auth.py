"""Preview credentials and the security pitfalls of proxy-research.md §8."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx
import pytest

from proxy.auth import Auth, SignedExpiryError, SignedLabelError
from proxy.registry import Sandbox
from tests.helpers import REPO_ROOT, RunningDaemon
from tests.proxy_helpers import AUTH, DOMAIN, SECRET, App, Proxy, start_proxy

REGISTRY_TOKEN = "registry-token-abc"


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, daemon: RunningDaemon) -> Iterator[Proxy]:
    running = start_proxy(tmp_path_factory.mktemp("proxy"), {
        "priv": {"url": daemon.url, "public": False},
        "other": {"url": daemon.url, "public": False},
        "tok": {"url": daemon.url, "public": False, "token": REGISTRY_TOKEN},
        "pub": {"url": daemon.url, "public": True},
    })
    yield running
    running.stop()


def minted(proxy: Proxy, sandbox: str, port: int) -> dict[str, str]:
    with proxy.client() as client:
        response = client.get(f"/sandbox/{sandbox}/ports/{port}/preview-url", headers=AUTH)
    assert response.status_code == 200, response.text
    return response.json()


def signed(proxy: Proxy, sandbox: str, port: int, seconds: int) -> dict[str, object]:
    with proxy.client() as client:
        response = client.get(f"/sandbox/{sandbox}/ports/{port}/signed-preview-url",
                              params={"expiresInSeconds": seconds}, headers=AUTH)
    assert response.status_code == 200, response.text
    return response.json()


def get(proxy: Proxy, host: str, path: str = "/info/x", **kwargs: Any) -> httpx.Response:
    headers = {"Host": host, **kwargs.pop("headers", {})}
    with proxy.client() as client:
        return client.get(path, headers=headers, **kwargs)


def seen_headers(response: httpx.Response) -> dict[str, str]:
    return dict(response.json()["headers"])


def test_minting_shapes_and_api_key(proxy: Proxy, app: App) -> None:
    preview = minted(proxy, "priv", app.port)
    assert set(preview) == {"sandboxId", "url", "token"}
    assert preview["url"] == f"http://{app.port}-priv.{DOMAIN}:{proxy.port}"
    assert minted(proxy, "tok", app.port)["token"] == REGISTRY_TOKEN
    link = signed(proxy, "priv", app.port, 60)
    assert set(link) == {"sandboxId", "port", "token", "url"} and link["port"] == app.port
    with proxy.client() as client:
        assert client.get(f"/sandbox/priv/ports/{app.port}/preview-url").status_code == 401
        assert client.get(f"/sandbox/priv/ports/{app.port}/preview-url",
                          headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get(f"/sandbox/nope/ports/{app.port}/preview-url", headers=AUTH).status_code == 404
        for bad in ("0", "86401", "x", "9" * 5000):  # (5000 digits: more than int() parses)
            response = client.get(f"/sandbox/priv/ports/{app.port}/signed-preview-url",
                                  params={"expiresInSeconds": bad}, headers=AUTH)
            assert response.status_code == 400 and response.headers["x-proxy-error"] == "invalid-expiry"
        assert client.get("/sandbox/priv/ports/99999/preview-url", headers=AUTH).status_code == 400


def test_private_preview_needs_a_credential(proxy: Proxy, app: App) -> None:
    host = proxy.host(app.port, "priv")
    missing = get(proxy, host)
    assert missing.status_code == 401 and missing.headers["x-proxy-error"] == "preview-auth-required"
    wrong = get(proxy, host, headers={"X-Daytona-Preview-Token": "nope"})
    assert wrong.status_code == 401 and wrong.headers["x-proxy-error"] == "invalid-preview-token"
    token = minted(proxy, "priv", app.port)["token"]
    ok = get(proxy, host, headers={"X-Daytona-Preview-Token": token})
    assert ok.status_code == 200
    assert "x-daytona-preview-token" not in seen_headers(ok)
    # One sandbox's token opens no other sandbox.
    assert get(proxy, proxy.host(app.port, "other"), headers={"X-Daytona-Preview-Token": token}).status_code == 401
    # An API key works too and is not forwarded.
    by_key = get(proxy, host, headers=AUTH)
    assert by_key.status_code == 200 and "authorization" not in seen_headers(by_key)


def test_registry_token_replaces_the_derived_one(proxy: Proxy, app: App) -> None:
    host = proxy.host(app.port, "tok")
    derived = Auth(SECRET.encode(), ()).preview_token(Sandbox("tok", "http://x"))
    assert get(proxy, host, headers={"X-Daytona-Preview-Token": derived}).status_code == 401
    assert get(proxy, host, headers={"X-Daytona-Preview-Token": REGISTRY_TOKEN}).status_code == 200


def test_query_token_becomes_a_bound_host_only_cookie(proxy: Proxy, app: App) -> None:
    host = proxy.host(app.port, "priv")
    token = minted(proxy, "priv", app.port)["token"]
    with proxy.client() as client:
        bootstrap = client.get(f"/info/a%2Fb?z=%41+1&DAYTONA_SANDBOX_AUTH_KEY={token}&y", headers={"Host": host})
    assert bootstrap.status_code == 302
    assert bootstrap.headers["location"] == "/info/a%2Fb?z=%41+1&y"  # the rest of the query untouched
    cookie = bootstrap.headers["set-cookie"]
    attributes = [part.strip().lower() for part in cookie.split(";")]
    assert "httponly" in attributes and "path=/" in attributes and "samesite=lax" in attributes
    assert not any(a.startswith("domain=") for a in attributes)  # host-only
    assert "secure" not in attributes  # plain http here; Secure over https
    name, value = cookie.split(";", 1)[0].split("=", 1)

    jar = f"theme=dark; {name}={value}; session=app"
    ok = get(proxy, host, headers={"Cookie": jar})
    assert ok.status_code == 200
    assert seen_headers(ok)["cookie"] == "theme=dark; session=app"  # ours stripped, the app's kept
    # Bound to sandbox and port: useless anywhere else even if a browser sent it there.
    assert get(proxy, proxy.host(app.port, "other"), headers={"Cookie": jar}).status_code == 401
    assert get(proxy, proxy.host(app.port + 1 if app.port < 65535 else 1, "priv"),
               headers={"Cookie": jar}).status_code == 401
    tampered = value[:-2] + ("aa" if not value.endswith("aa") else "bb")
    assert get(proxy, host, headers={"Cookie": f"{name}={tampered}"}).status_code == 401


def test_query_token_on_post_is_stripped_and_forwarded(proxy: Proxy, app: App) -> None:
    token = minted(proxy, "priv", app.port)["token"]
    with proxy.client() as client:
        response = client.post(f"/count?DAYTONA_SANDBOX_AUTH_KEY={token}&keep=1", content=b"abc",
                               headers={"Host": proxy.host(app.port, "priv")})
    assert response.json()["size"] == 3


def test_public_sandbox_opens_every_port_but_the_toolbox(proxy: Proxy, app: App) -> None:
    assert get(proxy, proxy.host(app.port, "pub")).status_code == 200
    locked = get(proxy, proxy.host(2280, "pub"), "/version")
    assert locked.status_code == 401
    with proxy.client() as client:
        assert client.get("/toolbox/pub/version").status_code == 401


def test_signed_preview_url(proxy: Proxy, app: App) -> None:
    link = signed(proxy, "priv", app.port, 60)
    host = urlsplit(str(link["url"])).netloc
    assert len(host.split(".")[0]) <= 63
    ok = get(proxy, host)
    assert ok.status_code == 200
    assert seen_headers(ok)["x-forwarded-host"] == host
    # Bound to its port: the same token on another port is refused.
    other_port = app.port + 1 if app.port < 65535 else 1
    wrong_port = get(proxy, f"{other_port}-{link['token']}.{DOMAIN}:{proxy.port}")
    assert wrong_port.status_code == 403 and wrong_port.headers["x-proxy-error"] == "invalid-signed-url"
    # Altered tokens are refused.
    token = str(link["token"])
    altered = token[:10] + ("a" if token[10] != "a" else "b") + token[11:]
    assert get(proxy, f"{app.port}-{altered}.{DOMAIN}:{proxy.port}").status_code in (403, 404)


def test_signed_preview_url_expires(proxy: Proxy, app: App) -> None:
    link = signed(proxy, "priv", app.port, 1)
    host = urlsplit(str(link["url"])).netloc
    time.sleep(2.1)
    expired = get(proxy, host)
    assert expired.status_code == 403 and expired.headers["x-proxy-error"] == "signed-url-expired"


def test_signed_label_fits_a_dns_label_for_uuids() -> None:
    auth = Auth(b"k", ())
    sandbox = Sandbox(str(uuid.uuid4()), "http://x")
    label = auth.mint_signed_label(sandbox, 65535, int(time.time()) + 86400)
    assert len(f"65535-{label}") <= 63
    decoded = auth.decode_signed_label(label)
    assert decoded is not None and decoded.sandbox_id == sandbox.id
    assert auth.verify_signed_label(decoded, sandbox, 65535)
    assert not auth.verify_signed_label(decoded, sandbox, 65534)
    # A rotated preview token invalidates the link.
    assert not auth.verify_signed_label(decoded, Sandbox(sandbox.id, "http://x", token="rotated"), 65535)


def test_one_signer_for_the_proxy_its_cli_and_the_control_plane() -> None:
    auth = Auth(b"k", ())
    sandbox, other = Sandbox("sbx-a", "http://x"), Sandbox("sbx-b", "http://x")
    label = auth.sign_preview(sandbox, 3000, 60, now=1_000)
    found = auth.signed_label_for(label, sandbox, 3000)
    assert found is not None and found.expires_at == 1_060
    assert auth.signed_label_for(label, sandbox, 3001) is None  # bound to its port
    assert auth.signed_label_for(label, other, 3000) is None  # and to its sandbox
    assert auth.signed_label_for("sbx-a", sandbox, 3000) is None  # a plain id is no signed label
    for seconds in (0, 86401):
        with pytest.raises(SignedExpiryError):
            auth.sign_preview(sandbox, 3000, seconds)
    with pytest.raises(SignedLabelError) as too_long:
        auth.sign_preview(Sandbox("x" * 17, "http://x"), 3000, 60)
    assert not isinstance(too_long.value, SignedExpiryError)


async def _ws(proxy: Proxy, host: str, headers: dict[str, str]) -> int | str:
    async with aiohttp.ClientSession() as session:
        try:
            async with session.ws_connect(f"ws://127.0.0.1:{proxy.port}/ws", headers={"Host": host, **headers}) as ws:
                await ws.send_str("ping")
                return (await ws.receive()).data
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status


def _cookie(proxy: Proxy, app: App, sandbox: str) -> str:
    token = minted(proxy, sandbox, app.port)["token"]
    response = get(proxy, proxy.host(app.port, sandbox), f"/?DAYTONA_SANDBOX_AUTH_KEY={token}")
    return response.headers["set-cookie"].split(";", 1)[0]


def test_cookie_websockets_must_come_from_the_preview_origin(proxy: Proxy, app: App) -> None:
    host = proxy.host(app.port, "priv")
    cookie = _cookie(proxy, app, "priv")
    same = asyncio.run(_ws(proxy, host, {"Cookie": cookie, "Origin": f"http://{host}"}))
    foreign = asyncio.run(_ws(proxy, host, {"Cookie": cookie, "Origin": f"http://{proxy.host(app.port, 'other')}"}))
    no_origin = asyncio.run(_ws(proxy, host, {"Cookie": cookie}))
    token = minted(proxy, "priv", app.port)["token"]
    by_token = asyncio.run(_ws(proxy, host, {"X-Daytona-Preview-Token": token}))
    anonymous = asyncio.run(_ws(proxy, host, {}))
    assert same == "ping"
    assert foreign == 403 and no_origin == 403
    assert by_token == "ping"  # a token is not ambient: no Origin needed
    assert anonymous == 401


def test_cli_prints_a_working_preview_url(proxy: Proxy, app: App) -> None:
    env = {"PROXY_DOMAIN": DOMAIN, "PROXY_REGISTRY": f"file:{proxy.registry_path}", "PROXY_SECRET": SECRET,
           "PROXY_PUBLIC_URL": f"http://{DOMAIN}:{proxy.port}", "PATH": "/usr/bin:/bin"}
    for extra in ([], ["--expires", "60"]):
        output = subprocess.run([sys.executable, "-m", "proxy", "preview-url", "priv", str(app.port), *extra],
                                env=env, cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()
        parts = urlsplit(output)
        with httpx.Client(base_url=proxy.url, timeout=10, follow_redirects=False) as client:
            response = client.get(parts.path + ("?" + parts.query if parts.query else ""), headers={"Host": parts.netloc})
        # Either the cookie bootstrap, or the app itself answering (its own 404 for "/").
        assert response.status_code == 302 or response.text == "app 404", (output, response.text)
        assert "x-proxy-error" not in response.headers


def test_https_cookie_and_api_keys_file(tmp_path: Path, daemon: RunningDaemon, app: App) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# one key per line\nfile-key-1\n")
    proxy = start_proxy(tmp_path, {"priv": {"url": daemon.url, "public": False}},
                        extra_args=["--public-url", "https://preview.test", "--api-keys-file", str(keys)])
    try:
        with proxy.client() as client:
            minted_url = client.get(f"/sandbox/priv/ports/{app.port}/preview-url",
                                    headers={"Authorization": "Bearer file-key-1"})
            assert minted_url.status_code == 200
            assert minted_url.json()["url"] == f"https://{app.port}-priv.preview.test"
            token = minted_url.json()["token"]
            bootstrap = client.get(f"/?DAYTONA_SANDBOX_AUTH_KEY={token}",
                                   headers={"Host": f"{app.port}-priv.preview.test"})
        cookie = bootstrap.headers["set-cookie"]
        assert cookie.startswith("__Host-sbx-preview-auth=")
        assert "Secure" in cookie and "HttpOnly" in cookie and "Domain" not in cookie
    finally:
        proxy.stop()


def _preflight(proxy: Proxy, host: str, origin: str, method: str | None = "POST") -> httpx.Response:
    headers = {"Host": host, "Origin": origin}
    if method is not None:
        headers["Access-Control-Request-Method"] = method
        headers["Access-Control-Request-Headers"] = "x-daytona-preview-token"
    with proxy.client() as client:
        return client.options("/cors", headers=headers)


def test_cors_preflight_from_a_sibling_preview_reaches_the_app(proxy: Proxy, app: App) -> None:
    # A frontend on port 3000 of a private sandbox calls its API on another port: the
    # browser's preflight carries no credentials, so it passes only from the same sandbox's
    # preview origins, and only the app's CORS headers come back.
    api = proxy.host(app.port, "priv")
    sibling = f"http://3000-priv.{DOMAIN}:{proxy.port}"
    answer = _preflight(proxy, api, sibling)
    assert answer.status_code == 204  # fixed: the app's own status would reveal which ports answer
    assert answer.headers["access-control-allow-origin"] == sibling
    assert answer.headers["access-control-allow-credentials"] == "true"
    assert answer.headers["vary"] == "Origin"
    assert "x-app-secret" not in answer.headers and answer.content == b""

    link = signed(proxy, "priv", 3000, 60)  # a signed preview of the same sandbox is a sibling too
    signed_origin = str(link["url"]).rstrip("/")
    assert _preflight(proxy, api, signed_origin).headers["access-control-allow-origin"] == signed_origin

    token = minted(proxy, "priv", app.port)["token"]  # the real request then carries the token
    with proxy.client() as client:
        real = client.get("/info/x", headers={"Host": api, "Origin": sibling, "X-Daytona-Preview-Token": token})
    assert real.status_code == 200


@pytest.mark.parametrize("origin, method", [
    (f"http://3000-other.{DOMAIN}", "POST"),  # another sandbox's preview
    ("http://evil.example", "POST"),  # not a preview at all
    (f"https://3000-priv.{DOMAIN}", "POST"),  # wrong scheme for this proxy
    (f"http://3000-priv.{DOMAIN}", None),  # an OPTIONS request that is not a preflight
])
def test_other_preflights_to_a_private_preview_need_credentials(proxy: Proxy, app: App, origin: str,
                                                                method: str | None) -> None:
    answer = _preflight(proxy, proxy.host(app.port, "priv"), origin, method)
    assert answer.status_code == 401 and answer.headers["x-proxy-error"] == "preview-auth-required"


def test_samesite_none_cookie_for_embedded_previews_is_partitioned(tmp_path: Path, daemon: RunningDaemon,
                                                                   app: App) -> None:
    proxy = start_proxy(tmp_path, {"priv": {"url": daemon.url, "public": False}},
                        extra_args=["--public-url", "https://preview.test", "--cookie-samesite", "none"])
    host = f"{app.port}-priv.preview.test"
    try:
        with proxy.client() as client:
            token = client.get(f"/sandbox/priv/ports/{app.port}/preview-url", headers=AUTH).json()["token"]
            bootstrap = client.get(f"/?DAYTONA_SANDBOX_AUTH_KEY={token}", headers={"Host": host})
            cookie = bootstrap.headers["set-cookie"]
            attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
            assert cookie.startswith("__Host-sbx-preview-auth=")
            assert {"samesite", "secure", "partitioned", "httponly"} <= attributes and "domain" not in attributes
            assert "SameSite=None" in cookie
            authed = client.get("/info/x", headers={"Host": host, "Cookie": cookie.split(";", 1)[0]})
            assert authed.status_code == 200
    finally:
        proxy.stop()


def test_samesite_none_over_http_is_refused_at_start(tmp_path: Path) -> None:
    registry = tmp_path / "registry.json"
    registry.write_text('{"sandboxes": {}}')
    result = subprocess.run([sys.executable, "-m", "proxy", "serve", "--domain", DOMAIN, "--registry", f"file:{registry}",
                             "--cookie-samesite", "none", "--port", "0"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "https" in result.stderr
