"""Daytona's front door against the real main job (`./scripts/start`): the official SDK's
`Daytona(DaytonaConfig(api_url=..., api_key=...))` creates, runs code in, lists, stops,
starts and deletes sandboxes through `http://localhost:PORT/api`, unchanged."""

from __future__ import annotations

import json
import os
import stat

import httpx
import pytest

from tests.controlplane_helpers import daytona, stack_fixture
from tests.runtime_helpers import Stack, needs_bwrap

pytestmark = needs_bwrap


stack = stack_fixture("cp")  # on SQLite and on PostgreSQL


def test_banner_prints_ready_to_copy_daytona_settings(stack: Stack) -> None:
    key = stack.api_key
    assert f"DAYTONA_API_URL=http://localhost:{stack.port}/api" in stack.banner_lines
    assert f"DAYTONA_API_KEY={key}" in stack.banner_lines
    assert key.startswith("dtn_") and len(key) == 4 + 64
    assert stat.S_IMODE(os.stat(stack.state_dir / "api-key").st_mode) == 0o600
    if "CONTROLPLANE_DATABASE_URL" not in stack.env:  # SQLite, the default store
        assert stat.S_IMODE(os.stat(stack.state_dir / "controlplane.db").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(stack.state_dir / "control").st_mode) == 0o700


def test_create_code_run_stop_start_delete_through_the_official_sdk(stack: Stack) -> None:
    from daytona import DaytonaNotFoundError

    d = daytona(stack)
    sandbox = d.create()
    assert sandbox.state == "started"
    assert sandbox.labels["code-toolbox-language"] == "python"
    assert sandbox.toolbox_proxy_url == f"http://localhost:{stack.port}/toolbox"
    assert sandbox.process.code_run("print(1)").result.strip() == "1"
    assert sandbox.id in [s.id for s in d.list()]
    assert d.get(sandbox.id).id == sandbox.id
    assert d.get(sandbox.name).id == sandbox.id
    sandbox.stop()
    assert sandbox.state == "stopped"
    assert d.get(sandbox.id).state == "stopped"
    sandbox.start()
    assert sandbox.state == "started"
    assert sandbox.process.exec("echo again").result.strip() == "again"
    sandbox.delete()
    with pytest.raises(DaytonaNotFoundError, match="not found"):
        d.get(sandbox.id)
    assert sandbox.id not in [s.id for s in d.list()]


def test_a_bad_key_is_a_401_in_daytonas_envelope(stack: Stack) -> None:
    from daytona import DaytonaAuthenticationError

    with pytest.raises(DaytonaAuthenticationError):
        daytona(stack, key="dtn_" + "0" * 64).get("anything")
    response = httpx.get(f"{stack.url}/api/sandbox", headers={"Host": f"localhost:{stack.port}"})
    assert response.status_code == 401
    body = response.json()
    assert body["statusCode"] == 401 and body["source"] == "DAYTONA_API" and body["path"] == "/api/sandbox"
    assert "Authorization: Bearer" in body["message"]


def test_the_proxy_learns_started_sandboxes_and_key_hashes_from_the_control_plane(stack: Stack) -> None:
    d = daytona(stack)
    sandbox = d.create()
    try:
        registry = json.loads((stack.state_dir / "registry.json").read_text())
        assert stat.S_IMODE(os.stat(stack.state_dir / "registry.json").st_mode) == 0o600
        entry = registry["sandboxes"][sandbox.id]
        assert entry["organization"] == sandbox.organization_id and entry["url"].startswith("unix:")
        assert stack.api_key not in json.dumps(registry)  # hashes only
        assert sandbox.organization_id in registry["api_keys"].values()
    finally:
        sandbox.delete()
    registry = json.loads((stack.state_dir / "registry.json").read_text())
    assert sandbox.id not in registry["sandboxes"]
