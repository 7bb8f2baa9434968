"""The official SDK drives daemons through the proxy's /toolbox/ path with an API key,
exactly as it does against Daytona's proxy (`{toolboxProxyUrl}/{sandboxId}/...`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.helpers import RunningDaemon, start_daemon
from tests.proxy_helpers import API_KEY, Proxy, start_proxy

if TYPE_CHECKING:
    from daytona.internal.toolbox_api_client_proxy import ToolboxApiClientProxy
    from daytona_toolbox_api_client import ApiClient


def sdk_client(proxy: Proxy, sandbox_id: str, api_key: str = API_KEY) -> ToolboxApiClientProxy[ApiClient]:
    from daytona.internal.toolbox_api_client_proxy import ToolboxApiClientProxy
    from daytona_toolbox_api_client import ApiClient, Configuration

    api_client = ApiClient(Configuration(host=proxy.url))
    api_client.default_headers["Authorization"] = f"Bearer {api_key}"
    return ToolboxApiClientProxy(api_client, sandbox_id, proxy.url + "/toolbox")


@pytest.fixture(scope="module")
def uds_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    running = start_daemon(tmp_path_factory.mktemp("uds"), sandbox_id="sbx-uds", uds=True)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, daemon: RunningDaemon, uds_daemon: RunningDaemon) -> Iterator[Proxy]:
    running = start_proxy(tmp_path_factory.mktemp("proxy"), {
        "sbx-test": {"url": daemon.url},
        "sbx-uds": {"url": f"unix:{uds_daemon.uds}"},
    })
    yield running
    running.stop()


@pytest.mark.parametrize("sandbox_id", ["sbx-test", "sbx-uds"])
def test_sdk_info_calls_through_the_proxy(proxy: Proxy, sandbox_id: str, daemon: RunningDaemon,
                                          uds_daemon: RunningDaemon) -> None:
    from daytona_toolbox_api_client import InfoApi

    info = InfoApi(sdk_client(proxy, sandbox_id))
    target = daemon if sandbox_id == "sbx-test" else uds_daemon
    assert info.get_work_dir().dir == str(target.workdir)
    assert info.get_user_home_dir().dir == str(target.home)
    assert info.get_version()["version"]


def test_sdk_with_a_wrong_api_key_gets_a_clear_error(proxy: Proxy) -> None:
    from daytona_toolbox_api_client import InfoApi
    from daytona_toolbox_api_client.exceptions import UnauthorizedException

    with pytest.raises(UnauthorizedException) as info:
        InfoApi(sdk_client(proxy, "sbx-test", api_key="wrong")).get_work_dir()
    assert "Authorization" in str(info.value.body)


def test_sdk_filesystem_through_the_proxy(proxy: Proxy, daemon: RunningDaemon, tmp_path: Path) -> None:
    from daytona._sync.filesystem import FileSystem
    from daytona_toolbox_api_client import FileSystemApi

    fs = FileSystem(FileSystemApi(sdk_client(proxy, "sbx-test")), httpx.Client(timeout=60))
    payload = bytes(range(256)) * 4096
    fs.upload_file(payload, "via-proxy.bin")
    assert fs.download_file("via-proxy.bin") == payload
    assert (daemon.workdir / "via-proxy.bin").read_bytes() == payload


@pytest.mark.parametrize("sandbox_id", ["sbx-test", "sbx-uds"])
def test_sdk_pty_through_the_proxy(proxy: Proxy, sandbox_id: str) -> None:
    # The SDK's PTY WebSocket crosses both spliced hops (proxy, then daemon routes it to
    # its own PTY endpoint): control messages, output, input and the exit code all pass.
    import uuid

    from daytona._sync.process import Process
    from daytona_toolbox_api_client import ProcessApi

    process = Process("python", ProcessApi(sdk_client(proxy, sandbox_id)), httpx.Client(timeout=30))
    handle = process.create_pty_session(f"pty-{uuid.uuid4().hex[:8]}")
    handle.send_input("echo spliced-$((6*7)); exit 5\n")
    collected = b"".join(handle)  # iteration ends when the PTY exits
    handle.disconnect()
    assert b"spliced-42" in collected
    assert handle.exit_code == 5
