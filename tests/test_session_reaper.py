"""Orphans re-parented to the daemon (PID 1 in a container, or a subreaper) are reaped."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.helpers import start_daemon


def children(pid: int) -> dict[int, str]:
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found[int(name)] = fields[0]
    return found


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
