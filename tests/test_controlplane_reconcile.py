"""Crash safety: the main job killed with SIGKILL in the middle of a create leaves, after the
next start, neither an orphan (a sandbox without a record) nor a ghost (a record of a
sandbox that does not exist); sandboxes that were running come back as stopped records."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.runtime_helpers import Stack, bwrap_pids, needs_bwrap, start_stack

pytestmark = needs_bwrap


def _api(stack: Stack, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, f"{stack.url}/api{path}", timeout=60,
                         headers={"Authorization": f"Bearer {stack.api_key}", "Host": f"localhost:{stack.port}"},
                         **kwargs)


def test_sigkill_in_the_middle_of_a_create_leaves_no_orphan_and_no_ghost(tmp_path: Path) -> None:
    state = tmp_path / "state"
    stack = start_stack(state, "--no-sandbox", pool_size=0)  # cold creates: slow enough to catch
    try:
        survivor = _api(stack, "POST", "/sandbox", json={"name": "survivor"}).json()
        assert survivor["state"] == "started"
        threading.Thread(target=lambda: _api(stack, "POST", "/sandbox", json={"name": "doomed"}),
                         daemon=True).start()
        doomed = None
        deadline = time.monotonic() + 20
        while doomed is None and time.monotonic() < deadline:
            items = _api(stack, "GET", "/sandbox").json()["items"]
            doomed = next((s for s in items if s["name"] == "doomed" and s["state"] == "creating"), None)
            time.sleep(0.01)
        assert doomed is not None, "never saw the create in progress"
        os.kill(stack.process.pid, signal.SIGKILL)
        stack.process.wait(10)
    finally:
        if stack.process.poll() is None:
            stack.stop()
    deadline = time.monotonic() + 10
    while bwrap_pids(state) and time.monotonic() < deadline:  # they die with their parent
        time.sleep(0.1)
    assert not bwrap_pids(state)

    again = start_stack(state, "--no-sandbox", pool_size=0)
    try:
        items = {s["name"]: s for s in _api(again, "GET", "/sandbox").json()["items"]}
        assert "doomed" not in items  # no ghost record
        assert not (state / "sandboxes" / doomed["id"]).exists()  # no orphan on disk
        assert _api(again, "GET", f"/sandbox/{doomed['id']}").status_code == 404
        # The sandbox that was running is a real record (the main job restarts what a crash
        # interrupted), and it runs again with its files.
        assert items["survivor"]["state"] in ("stopped", "starting", "started")
        assert sorted(p.name for p in (state / "sandboxes").iterdir()) == [survivor["id"]]
        deadline = time.monotonic() + 30
        while _api(again, "GET", f"/sandbox/{survivor['id']}").json()["state"] == "starting":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        if _api(again, "GET", f"/sandbox/{survivor['id']}").json()["state"] == "stopped":
            assert _api(again, "POST", f"/sandbox/{survivor['id']}/start").status_code == 200
        assert _api(again, "GET", f"/sandbox/{survivor['id']}").json()["state"] == "started"
    finally:
        assert again.stop() == 0


def test_a_sandbox_lost_from_disk_is_an_error_record_and_the_main_job_still_starts(tmp_path: Path) -> None:
    import shutil

    state = tmp_path / "state"
    first = start_stack(state, pool_size=0)
    lost = first.first_id
    assert first.stop() == 0
    shutil.rmtree(state / "sandboxes" / lost)  # the backend no longer has it
    again = start_stack(state, pool_size=0)
    try:
        assert again.first_id != lost  # a new first sandbox instead of failing to start
        record = _api(again, "GET", f"/sandbox/{lost}").json()
        assert record["state"] == "error" and "gone from the backend" in record["errorReason"]
        # Not a ghost: it says what happened, and deleting it works.
        assert _api(again, "DELETE", f"/sandbox/{lost}").status_code == 200
        assert _api(again, "GET", f"/sandbox/{lost}").status_code == 404
    finally:
        assert again.stop() == 0
