"""The daemon stays cheap to start: each area's heavy dependency loads on that area's first use.

Figures (import time, time to ready, idle RSS) are in benchmarks/daemon_footprint.py; these
tests only pin down what an idle daemon must not import, and that lazy loading changes
nothing a client can see.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO_ROOT, start_daemon

# Loaded on first use of their area (forward WebSockets, git, watch, WebSocket upgrades,
# LSP) or never by the daemon at all (test-only packages).
LAZY = ("aiohttp", "yarl", "git", "gitdb", "watchfiles", "websockets", "jedi", "jedi_language_server",
        "schemathesis", "hypothesis", "httpx", "redis")

_PROBE = """
import json, sys
import toolbox.app, toolbox.server, toolbox.protocol
from toolbox.config import Settings
toolbox.app.create_app(Settings.from_environment(workdir=sys.argv[1], sandbox_id="sbx"))
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def test_building_the_app_imports_no_area_dependency(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE, str(tmp_path)], capture_output=True, text=True,
                         check=True, cwd=REPO_ROOT)
    loaded = set(json.loads(out.stdout))
    assert "toolbox" in loaded and "starlette" in loaded  # the probe did build the app
    # watchfiles is uvicorn's (its reloader); toolbox.server imports uvicorn, so check it
    # only through what the toolbox itself pulls in.
    assert sorted(loaded & (set(LAZY) - {"watchfiles"})) == []


def test_app_alone_does_not_import_watchfiles(tmp_path: Path) -> None:
    probe = ("import sys, toolbox.app\nfrom toolbox.config import Settings\n"
             "toolbox.app.create_app(Settings.from_environment(workdir=sys.argv[1], sandbox_id='sbx'))\n"
             "print('watchfiles' in sys.modules, 'multiprocessing' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True,
                         check=True, cwd=REPO_ROOT)
    assert out.stdout.split() == ["False", "False"]


def test_daemon_without_git_starts_and_git_calls_say_git_is_missing(tmp_path: Path) -> None:
    # GitPython's import runs `git version`: imported at start, it kept such a daemon from starting.
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    daemon = start_daemon(tmp_path, extra_env={"PATH": str(empty_bin)})
    try:
        repo = daemon.workdir / "repo"
        repo.mkdir()
        with daemon.client(timeout=30) as http:
            assert http.get("/version").status_code == 200
            for _ in range(2):  # the failed import is retried, and fails the same way
                response = http.get("/git/status", params={"path": str(repo)})
                assert response.status_code == 500
                assert "git is not installed in the sandbox" in response.json()["message"]
    finally:
        daemon.stop()
