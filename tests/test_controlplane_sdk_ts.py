"""The official TypeScript SDK (`@daytonaio/sdk`, pinned in tests/sdk-ts/package-lock.json)
against the real main job: `new Daytona({ apiUrl, apiKey })`, create, codeRun,
executeCommand, fs upload/download, getPreviewLink, get, list, stop/start and delete
(tests/sdk-ts/lifecycle.mjs), on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.controlplane_helpers import api_url, stack_fixture
from tests.helpers import REPO_ROOT
from tests.runtime_helpers import Stack, needs_bwrap

PROGRAM_DIR = REPO_ROOT / "tests" / "sdk-ts"

pytestmark = [
    needs_bwrap,
    pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed (.ci/run installs it)"),
    pytest.mark.skipif(not (PROGRAM_DIR / "node_modules" / "@daytonaio" / "sdk").is_dir(),
                       reason="the TypeScript SDK is not installed: run `npm ci` in tests/sdk-ts (.ci/run does)"),
]

stack = stack_fixture("sdk-ts")


def test_the_typescript_sdk_front_door(stack: Stack) -> None:
    env = dict(os.environ, DAYTONA_API_URL=api_url(stack), DAYTONA_API_KEY=stack.api_key)
    result = subprocess.run(["node", "lifecycle.mjs"], cwd=PROGRAM_DIR, env=env, capture_output=True, check=False,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["createdState"] == "started"
    assert seen["labels"]["suite"] == "sdk-ts" and seen["labels"]["code-toolbox-language"] == "python"
    assert seen["codeRun"] == {"exitCode": 0, "result": "42\n"}
    assert seen["executeCommand"]["exitCode"] == 0 and seen["executeCommand"]["result"].strip() == "21"
    assert seen["download"] == "hello from typescript\n"
    assert seen["preview"] == {"url": f"http://3000-{seen['id']}.localhost:{stack.port}", "hasToken": True}
    assert seen["found"] == seen["id"] and seen["listed"] == [seen["id"]]
    assert seen["eventsConnected"] is True  # its Socket.IO client authenticated at /api/socket.io
    assert seen["stoppedState"] == "stopped" and seen["startedState"] == "started"
    assert seen["afterRestart"] == "hello from typescript\n"
    assert seen["afterDelete"] == "DaytonaNotFoundError"
    assert seen["badSnapshot"].startswith("DaytonaValidationError") and "no-such-snapshot" in seen["badSnapshot"]
