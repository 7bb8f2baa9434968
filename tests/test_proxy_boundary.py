"""Attacks on the proxy's tenant boundary (issue 13), against the real proxy, daemon and app:
unauthenticated preflights, /metrics, cookies planted across sandboxes, credentials
passed on to apps."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.helpers import RunningDaemon, free_port
from tests.proxy_helpers import AUTH, DOMAIN, App, Proxy, start_proxy

TOKEN = "boundary-token"


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, daemon: RunningDaemon) -> Iterator[Proxy]:
    running = start_proxy(tmp_path_factory.mktemp("proxy"), {
        "priv": {"url": daemon.url, "public": False, "token": TOKEN},
        "pub": {"url": daemon.url, "public": True},
    })
    yield running
    running.stop()


def sibling(proxy: Proxy) -> str:
    return f"http://3000-priv.{DOMAIN}:{proxy.port}"


def preflight(proxy: Proxy, port: int, path: str = "/cors", **extra: str) -> httpx.Response:
    headers = {"Host": proxy.host(port, "priv"), "Origin": sibling(proxy),
               "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-daytona-preview-token",
               **extra}
    with proxy.client() as client:
        return client.request("OPTIONS", path, headers=headers, content=b"body for the app")


def last_preflight(proxy: Proxy, app: App) -> dict[str, object]:
    with proxy.client() as client:
        seen = client.get("/last-preflight", headers={"Host": proxy.host(app.port, "priv"),
                                                      "X-Daytona-Preview-Token": TOKEN})
    assert seen.status_code == 200, seen.text
    return dict(seen.json())


def test_metrics_need_the_api_key(proxy: Proxy, app: App) -> None:
    with proxy.client() as client:
        client.get("/x", headers={"Host": proxy.host(app.port, "pub")})
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-Daytona-Preview-Token": TOKEN}):
            denied = client.get("/metrics", headers=headers)
            assert denied.status_code == 401 and "pub" not in denied.text
            assert denied.headers["x-proxy-error"] == "api-key-required"
        allowed = client.get("/metrics", headers=AUTH)
    assert allowed.status_code == 200 and 'sandbox="pub"' in allowed.text


def test_unauthenticated_preflight_carries_nothing_but_the_cors_request(proxy: Proxy, app: App) -> None:
    answer = preflight(proxy, app.port, "/cors?probe=1", Cookie="session=victim; other=1",
                       Authorization="Bearer stolen", **{"X-Custom": "secret", "Content-Type": "text/plain"})
    assert answer.status_code == 204 and answer.content == b""
    assert answer.headers["access-control-allow-origin"] == sibling(proxy)
    assert "x-app-secret" not in answer.headers
    seen = last_preflight(proxy, app)
    assert seen["body"] == ""
    headers = seen["headers"]
    assert isinstance(headers, list)
    names = {name for name, _ in headers}
    for leaked in ("cookie", "authorization", "x-custom", "content-type", "content-length", "transfer-encoding"):
        assert leaked not in names, seen
    assert {"origin", "access-control-request-method", "access-control-request-headers"} <= names


def test_preflight_status_does_not_reveal_which_ports_answer(proxy: Proxy, app: App) -> None:
    closed = free_port()
    answers = [preflight(proxy, app.port), preflight(proxy, app.port, "/no-cors"), preflight(proxy, closed)]
    assert [a.status_code for a in answers] == [204, 204, 204]
    assert [("access-control-allow-origin" in a.headers) for a in answers] == [True, False, False]
    assert all(a.content == b"" and "x-proxy-error" not in a.headers for a in answers)


@pytest.mark.parametrize("port", [22222, 2280])
def test_no_unauthenticated_preflight_on_ports_that_always_need_credentials(proxy: Proxy, port: int) -> None:
    answer = preflight(proxy, port)
    assert answer.status_code == 401 and answer.headers["x-proxy-error"] == "preview-auth-required"


@pytest.mark.parametrize("route", ["preview", "toolbox"])
def test_app_cannot_plant_cookies_on_other_previews_or_forge_the_proxy_cookie(proxy: Proxy, app: App,
                                                                             route: str) -> None:
    with proxy.client() as client:
        if route == "preview":
            response = client.get("/cookies", headers={"Host": proxy.host(app.port, "priv"),
                                                       "X-Daytona-Preview-Token": TOKEN})
        else:
            response = client.get(f"/toolbox/priv/proxy/{app.port}/cookies", headers=AUTH)
    assert response.status_code == 200
    cookies = response.headers.get_list("set-cookie")
    assert cookies == ["planted=1; Path=/", "own=2; Path=/; HttpOnly"], cookies


def test_toolbox_proxy_route_strips_the_proxys_credentials(proxy: Proxy, app: App) -> None:
    with proxy.client() as client:
        for auth in ({"X-Daytona-Preview-Token": TOKEN}, AUTH):
            response = client.get(f"/toolbox/priv/proxy/{app.port}/info/x",
                                  params={"DAYTONA_SANDBOX_AUTH_KEY": TOKEN, "keep": "1"},
                                  headers={**auth, "Cookie": "sbx-preview-auth=123.abc; other=1"})
            assert response.status_code == 200, response.text
            seen = response.json()
            headers = dict(seen["headers"])
            assert seen["query"] == "keep=1"
            assert headers.get("cookie") == "other=1"
            assert "x-daytona-preview-token" not in headers and "authorization" not in headers
            assert TOKEN not in response.text


def test_proxy_refuses_a_unix_socket_served_by_another_uid(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Defence in depth behind the private socket dir: the registry records the sandbox's
    uid and the proxy checks SO_PEERCRED, so a socket served by anyone else (a link to
    another tenant's daemon, the runtime's control socket) is refused and logged."""
    import os

    from tests.helpers import start_daemon

    daemon = start_daemon(tmp_path_factory.mktemp("uds"), uds=True)
    try:
        assert daemon.uds is not None
        url = f"unix:{daemon.uds}"
        running = start_proxy(tmp_path_factory.mktemp("peer"), {
            "right": {"url": url, "public": True, "uid": os.getuid()},
            "wrong": {"url": url, "public": True, "uid": os.getuid() + 4242},
            "bad": {"url": url, "public": True, "uid": "not-a-number"},
        })
        try:
            with running.client() as client:
                assert client.get("/toolbox/right/version", headers=AUTH).status_code == 200
                refused = client.get("/toolbox/wrong/version", headers=AUTH)
                assert refused.status_code == 502 and refused.headers["x-proxy-error"] == "sandbox-unreachable"
                # An entry whose uid cannot be read is no sandbox at all, not an unchecked one.
                assert client.get("/toolbox/bad/version", headers=AUTH).status_code == 404
        finally:
            running.stop()
    finally:
        daemon.stop()
