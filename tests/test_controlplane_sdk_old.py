"""Older Python SDKs that integrations pin (Google ADK's `daytona-adk`: `daytona` 0.194.x; LangChain: >= 0.197)
through the front door against the real main job: create, code_run, get, list,
stop/start and delete (tests/sdk-py/lifecycle_old.py), in a venv of their own made once
under the worktree (`.venv-sdk-0194/`, `.venv-sdk-0197/`; pip's cache keeps it quick)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.controlplane_helpers import api_url, stack_fixture
from tests.helpers import REPO_ROOT
from tests.runtime_helpers import Stack, needs_bwrap

pytestmark = needs_bwrap

# Google ADK's daytona-adk pins 0.194.x (0.194.0 is the newest); LangChain's
# langchain-daytona needs >= 0.197.
SDK_VERSIONS = ["0.194.0", "0.197.0"]
PROGRAM = REPO_ROOT / "tests" / "sdk-py" / "lifecycle_old.py"

stack = stack_fixture("sdk-old")


def _sdk_python(version: str) -> Path:
    venv = REPO_ROOT / f".venv-sdk-{version.replace('.', '')[:4]}"
    python = venv / "bin" / "python"
    stamp = venv / f".installed-{version}"
    if not stamp.exists():
        try:
            if not python.exists():
                subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", f"daytona=={version}"], check=True,
                           capture_output=True, timeout=600)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"could not install daytona=={version} into {venv} (no package index?): {exc}")
        stamp.touch()
    return python


@pytest.mark.parametrize("version", SDK_VERSIONS)
def test_an_older_sdk_front_door(stack: Stack, version: str) -> None:
    python = _sdk_python(version)
    installed = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('daytona'))"],
                               capture_output=True, text=True, check=True).stdout.strip()
    assert installed == version
    env = dict(os.environ, DAYTONA_API_URL=api_url(stack), DAYTONA_API_KEY=stack.api_key)
    env.pop("PYTHONPATH", None)  # its own SDK, not this venv's
    result = subprocess.run([str(python), str(PROGRAM)], env=env, capture_output=True, text=True, timeout=180,
                            check=False, cwd="/")
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["created_state"] == "started"
    assert seen["code_run"].strip() == "42"
    assert seen["found"] == seen["id"] and seen["listed"] == [seen["id"]]
    assert seen["stopped_state"] == "stopped" and seen["started_state"] == "started"
    assert seen["after_restart"].strip() == "again"
    assert seen["after_delete"] == "DaytonaNotFoundError"
