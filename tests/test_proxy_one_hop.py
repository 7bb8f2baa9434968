"""Previews in one hop (a registry `address`: proxy -> app, no daemon in between) give the
app what the daemon's route would have, and fall back to the daemon when the address
refuses. Loopback stands in for a sandbox's own address (the veth is tested as root in
test_network_stack.py); the app listens on 127.0.0.1 only, so 127.0.0.2 refuses."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import RunningDaemon
from tests.proxy_helpers import AUTH, App, Proxy, start_proxy


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, daemon: RunningDaemon) -> Iterator[Proxy]:
    running = start_proxy(tmp_path_factory.mktemp("proxy"), {
        "hop": {"url": daemon.url, "public": True, "address": "127.0.0.1"},
        "hop-private": {"url": daemon.url, "public": False, "address": "127.0.0.1", "token": "hop-token"},
        "refused": {"url": daemon.url, "public": True, "address": "127.0.0.2"},
        "daemon": {"url": daemon.url, "public": True},
    })
    yield running
    running.stop()


def _seen(proxy: Proxy, label: str, app: App, headers: dict[str, str] | None = None) -> dict[str, list[str]]:
    with proxy.client() as client:
        response = client.get("/info/a%2Fb?q=%41&DAYTONA_SANDBOX_AUTH_KEY=hop-token",
                              headers={"Host": proxy.host(app.port, label), "X-Forwarded-For": "6.6.6.6",
                                       "Cookie": "app=1; sbx-preview-auth=1.x", **(headers or {})})
    assert response.status_code == 200, response.text
    seen = response.json()
    assert seen["raw_path"] == "/info/a%2Fb"
    assert seen["query"] == "q=%41"  # the proxy's token never reaches the app
    out: dict[str, list[str]] = {}
    for key, value in seen["headers"]:
        out.setdefault(key, []).append(value)
    return out


def test_one_hop_gives_the_app_what_the_daemon_route_gives(proxy: Proxy, app: App) -> None:
    through_daemon = _seen(proxy, "daemon", app)
    one_hop = _seen(proxy, "hop", app)
    for name in ("host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-port", "cookie"):
        assert one_hop[name] == through_daemon[name], name
    assert one_hop["x-forwarded-host"] == [proxy.host(app.port, "hop")]
    assert one_hop["host"] == [f"localhost:{app.port}"]
    assert one_hop["x-forwarded-for"] == ["127.0.0.1"]
    assert one_hop["cookie"] == ["app=1"]  # the proxy's cookie is taken out of the jar
    assert "x-daytona-preview-token" not in one_hop


def test_one_hop_drops_the_proxys_credentials(proxy: Proxy, app: App) -> None:
    seen = _seen(proxy, "hop-private", app, {**AUTH, "X-Daytona-Preview-Token": "hop-token"})
    assert "authorization" not in seen  # an API key that reaches the sandbox is the proxy's
    assert "x-daytona-preview-token" not in seen
    # Another key is no credential here: it is the app's business, and reaches the app.
    with proxy.client() as client:
        refused = client.get("/info/x", headers={"Host": proxy.host(app.port, "hop-private"),
                                                 "Authorization": "Bearer not-a-key"})
    assert refused.status_code == 401
    assert _seen(proxy, "hop-private", app, {"X-Daytona-Preview-Token": "hop-token",
                                             "Authorization": "Bearer app-own"})["authorization"] == ["Bearer app-own"]


def test_a_refusing_address_falls_back_to_the_daemon(proxy: Proxy, app: App) -> None:
    seen = _seen(proxy, "refused", app)
    assert seen["host"] == [f"localhost:{app.port}"]
    with proxy.client() as client:
        for label in ("refused", "hop"):  # a body goes either way, whole
            posted = client.post("/count", content=b"x" * 100_000, headers={"Host": proxy.host(app.port, label)})
            assert posted.status_code == 200 and posted.json()["size"] == 100_000, label
