"""Policies are enforced, not just stored: auto-stop from the proxy's activity records,
auto-delete after a stop (and at once for ephemeral sandboxes), per sandbox, through the
SDK. A policy minute lasts 1 s here (CONTROLPLANE_MINUTE_SECONDS)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from tests.controlplane_helpers import daytona
from tests.runtime_helpers import Stack, needs_bwrap, start_stack

pytestmark = needs_bwrap


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("policies"), "--no-sandbox", pool_size=1,
                          extra_env={"CONTROLPLANE_MINUTE_SECONDS": "1"})
    yield running
    running.stop()


def eventually(check: Callable[[], bool], timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


def state_of(stack: Stack, sandbox_id: str) -> str | None:
    response = stack.api("GET", f"/sandbox/{sandbox_id}")
    return None if response.status_code == 404 else str(response.json()["state"])


def test_auto_stop_after_the_interval_without_traffic(stack: Stack) -> None:
    from daytona import CreateSandboxFromSnapshotParams

    d = daytona(stack)
    idle = d.create(CreateSandboxFromSnapshotParams(auto_stop_interval=3))
    busy_until = time.monotonic() + 5
    try:
        while time.monotonic() < busy_until:  # traffic through the proxy keeps it started
            assert idle.process.exec("true").exit_code == 0
            time.sleep(0.5)
        assert state_of(stack, idle.id) == "started"
        assert eventually(lambda: state_of(stack, idle.id) == "stopped")
        never = d.create(CreateSandboxFromSnapshotParams(auto_stop_interval=0))
        time.sleep(4)
        assert state_of(stack, never.id) == "started"  # 0 = never
        never.delete()
    finally:
        idle.delete()


def test_a_label_change_does_not_postpone_auto_stop_a_toolbox_call_does(stack: Stack) -> None:
    from daytona import CreateSandboxFromSnapshotParams

    d = daytona(stack)
    edited = d.create(CreateSandboxFromSnapshotParams(auto_stop_interval=3))
    called = d.create(CreateSandboxFromSnapshotParams(auto_stop_interval=3))
    called_since = time.monotonic()
    try:
        # Both get attention every 0.5 s, for longer than their 3 s: one its labels
        # edited through the API, the other a toolbox call through the proxy.
        deadline = time.monotonic() + 15
        edited_state = "started"
        while time.monotonic() < deadline and (edited_state == "started" or time.monotonic() - called_since < 5):
            if edited_state == "started":
                edited.set_labels({"tick": str(time.monotonic())})
            assert called.process.exec("true").exit_code == 0
            time.sleep(0.5)
            edited_state = state_of(stack, edited.id) or "gone"
        assert edited_state == "stopped"  # the edits never counted as activity
        assert time.monotonic() - called_since >= 5
        assert state_of(stack, called.id) == "started"  # the calls did
    finally:
        edited.delete()
        called.delete()


def test_auto_delete_after_a_stop_and_ephemeral_sandboxes(stack: Stack) -> None:
    from daytona import CreateSandboxFromSnapshotParams

    d = daytona(stack)
    later = d.create(CreateSandboxFromSnapshotParams(auto_stop_interval=0, auto_delete_interval=2))
    later.stop()
    assert state_of(stack, later.id) == "stopped"
    assert eventually(lambda: state_of(stack, later.id) is None)
    assert not (stack.state_dir / "sandboxes" / later.id).exists()
    ephemeral = d.create(CreateSandboxFromSnapshotParams(ephemeral=True, auto_stop_interval=0))
    ephemeral.stop()  # gone at once: the SDK's wait sees the 404 as destroyed
    assert state_of(stack, ephemeral.id) is None
    assert not (stack.state_dir / "sandboxes" / ephemeral.id).exists()


def test_auto_archive_after_a_stop_and_start_restores(stack: Stack) -> None:
    from daytona import CreateSandboxFromSnapshotParams

    d = daytona(stack)
    sandbox = d.create(CreateSandboxFromSnapshotParams(auto_stop_interval=0, auto_archive_interval=2))
    try:
        sandbox.process.exec("echo kept > note.txt")
        sandbox.stop()
        assert eventually(lambda: state_of(stack, sandbox.id) == "archived")
        assert not (stack.state_dir / "sandboxes" / sandbox.id / "home" / "note.txt").exists()
        sandbox.start()
        assert sandbox.process.exec("cat note.txt").result.strip() == "kept"
    finally:
        sandbox.delete()
