"""Info/server endpoints through the official SDK's generated client, bare and prefixed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from daytona_toolbox_api_client import InfoApi, InitializeRequest, ServerApi, SystemApi
from daytona_toolbox_api_client.exceptions import ApiException

from tests.helpers import RunningDaemon, sdk_api_client


@pytest.mark.parametrize("via_prefix", [False, True])
def test_dirs_and_version(daemon: RunningDaemon, via_prefix: bool) -> None:
    api = sdk_api_client(daemon, via_prefix=via_prefix)
    info = InfoApi(api)
    assert info.get_work_dir().dir == str(daemon.workdir)
    assert info.get_user_home_dir().dir == str(daemon.home)
    assert info.get_version()["version"].startswith("v")


def test_init_accepts_json_without_content_type(daemon: RunningDaemon) -> None:
    ServerApi(sdk_api_client(daemon)).initialize(InitializeRequest(token="abc"))
    with daemon.client() as http:
        response = http.post("/init", content=b'{"token": "t"}')
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"


def test_env_sets_and_unsets_for_later_processes(fresh_daemon: RunningDaemon) -> None:
    from daytona_toolbox_api_client.models.update_env_request import UpdateEnvRequest

    server = ServerApi(sdk_api_client(fresh_daemon))
    server.update_env(UpdateEnvRequest(set={"TOOLBOX_TEST_A": "one"}))
    with fresh_daemon.client() as http:
        response = http.post("/env", content=json.dumps({"unset": ["TOOLBOX_TEST_A"], "set": {"B_2": "two"}}))
        assert response.status_code == 200, response.text


def test_env_rejects_bad_names(daemon: RunningDaemon) -> None:
    with daemon.client() as http:
        response = http.post("/env", content=b'{"set": {"1BAD": "x"}}')
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "BAD_REQUEST" and body["source"] == "DAYTONA_DAEMON"
    assert "1BAD" in body["message"]


def test_metrics_shape(daemon: RunningDaemon) -> None:
    metrics = SystemApi(sdk_api_client(daemon)).get_system_metrics()
    assert metrics.cpu_count is not None and metrics.cpu_count >= 1
    assert metrics.mem_total is not None and metrics.mem_total > 0
    assert metrics.disk_total is not None and metrics.disk_total > 0
    assert metrics.cpu_used_pct is not None and 0 <= metrics.cpu_used_pct <= 100
    assert metrics.timestamp is not None and metrics.timestamp.endswith("Z")


def test_errors_are_error_responses(daemon: RunningDaemon) -> None:
    with daemon.client() as http:
        missing = http.get("/no/such/route")
        bad_json = http.post("/env", content=b"{not json")
        wrong_method = http.delete("/version")
    for response, status in ((missing, 404), (bad_json, 400), (wrong_method, 405)):
        assert response.status_code == status
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert set(body) >= {"statusCode", "message", "code", "source", "timestamp", "path", "method"}
        assert body["statusCode"] == status


def test_sdk_raises_precise_errors_for_bad_body(daemon: RunningDaemon) -> None:
    with pytest.raises(ApiException) as caught:
        ServerApi(sdk_api_client(daemon)).update_env({"set": {"bad name": "x"}})  # type: ignore[arg-type]
    assert caught.value.status == 400


def test_unix_socket(tmp_path: Path) -> None:
    from tests.helpers import start_daemon

    running = start_daemon(tmp_path, uds=True)
    try:
        with running.client() as http:
            assert http.get("/sbx-test/work-dir").json() == {"dir": str(running.workdir)}
        assert running.uds is not None and oct(os.stat(running.uds).st_mode)  # the socket exists
    finally:
        running.stop()
