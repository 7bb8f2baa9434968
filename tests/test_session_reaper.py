"""Orphans re-parented to the daemon (PID 1 in a container, or a subreaper) are reaped."""

from __future__ import annotations

import time
from pathlib import Path

from tests.helpers import start_daemon
from tests.procfs import children


def test_orphans_are_reaped_by_the_daemon(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path, extra_env={"TOOLBOX_SUBREAPER": "1"})
    try:
        with daemon.client() as client:
            # Each subshell exits at once; its `sleep` is orphaned to the daemon, then exits.
            response = client.post(
                "/process/execute", json={"command": "for i in 1 2 3; do (sleep 0.2 > /dev/null 2>&1 &); done; echo ok"}
            )
            assert response.json() == {"exitCode": 0, "result": "ok\n"}
        time.sleep(0.5)
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            zombies = [pid for pid, state in children(daemon.process.pid).items() if state == "Z"]
            if not zombies:
                break
            time.sleep(0.2)
        assert not zombies, f"zombies left under the daemon: {zombies}"
    finally:
        daemon.stop()
