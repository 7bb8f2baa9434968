"""Ports from the kernel's socket tables, through the official SDK's generated PortApi."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator

import pytest
from daytona_toolbox_api_client import PortApi
from daytona_toolbox_api_client.exceptions import ApiException

from tests.helpers import RunningDaemon, sdk_api_client
from toolbox.ports.service import parse_listening


def _listener(family: int, host: str) -> socket.socket:
    """A listening socket on a free port in Daytona's 3000-9999 range."""
    for _ in range(200):
        sock = socket.socket(family, socket.SOCK_STREAM)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind((host, random.randint(3000, 9999)))
        except OSError:
            sock.close()
            continue
        sock.listen()
        return sock
    raise RuntimeError("no free port in 3000-9999")


@pytest.fixture
def ipv4_listener() -> Iterator[socket.socket]:
    sock = _listener(socket.AF_INET, "127.0.0.1")
    yield sock
    sock.close()


@pytest.fixture
def ipv6_listener() -> Iterator[socket.socket]:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        sock = _listener(socket.AF_INET6, "::1")
    except OSError:
        pytest.skip("IPv6 loopback unavailable")
    yield sock
    sock.close()


@pytest.mark.parametrize("via_prefix", [False, True])
def test_lists_ipv4_and_ipv6_listeners(
    daemon: RunningDaemon, ipv4_listener: socket.socket, ipv6_listener: socket.socket, via_prefix: bool
) -> None:
    api = PortApi(sdk_api_client(daemon, via_prefix=via_prefix))
    ports = api.get_ports().ports
    assert ports is not None
    assert ipv4_listener.getsockname()[1] in ports
    assert ipv6_listener.getsockname()[1] in ports
    assert daemon.url.rsplit(":", 1)[1] and int(daemon.url.rsplit(":", 1)[1]) in ports  # the daemon itself


def test_in_use_follows_the_socket(daemon: RunningDaemon) -> None:
    api = PortApi(sdk_api_client(daemon))
    sock = _listener(socket.AF_INET, "127.0.0.1")
    port = sock.getsockname()[1]
    assert api.is_port_in_use(port).is_in_use is True
    sock.close()
    assert api.is_port_in_use(port).is_in_use is False
    ports = api.get_ports().ports
    assert ports is not None and port not in ports


def test_connected_but_not_listening_sockets_are_not_ports(daemon: RunningDaemon, ipv4_listener: socket.socket) -> None:
    client = socket.create_connection(ipv4_listener.getsockname())
    try:
        ports = PortApi(sdk_api_client(daemon)).get_ports().ports
        assert ports is not None
        assert client.getsockname()[1] not in ports  # an ESTABLISHED client port
    finally:
        client.close()


@pytest.mark.parametrize("port, fragment", [("80", "out of range"), ("10000", "out of range"), ("abc", "invalid port")])
def test_in_use_rejects_bad_ports(daemon: RunningDaemon, port: str, fragment: str) -> None:
    with daemon.client() as http:
        response = http.get(f"/port/{port}/in-use")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "BAD_REQUEST" and fragment in body["message"]
    with pytest.raises(ApiException) as caught:
        PortApi(sdk_api_client(daemon)).is_port_in_use(80)
    assert caught.value.status == 400


def test_parse_listening_reads_both_table_layouts() -> None:
    rows = [
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode",
        "   0: 00000000:0BB8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1",
        "   1: 0100007F:1F90 0100007F:D3A2 01 00000000:00000000 00:00000000 00000000     0        0 2 1",
        "   0: 00000000000000000000000001000000:1F41 00000000000000000000000000000000:0000 0A 0 0 0 0 0 3",
    ]
    assert parse_listening(rows) == {3000, 8001}
