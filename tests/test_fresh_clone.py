"""A newcomer's first minutes (issue 14): clone into an ordinary 0755 directory under /tmp,
run the README's `./scripts/start` there (which creates the clone's own .venv), create a
sandbox, run a command in it, stop the job; then start again warm.

This is the slowest test of the suite (the clone's venv is a real `pip install -e .[test]`,
about a minute with pip's cache warm), and the one that catches a sandbox depending on
where the checkout lives.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT
from tests.runtime_helpers import DAEMON_PYTHON, needs_bwrap, start_stack

pytestmark = [
    needs_bwrap,
    pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed"),
    pytest.mark.timeout(900),
]


@pytest.fixture(scope="module")
def clone() -> Iterator[Path]:
    # Not pytest's tmp_path: its parents are 0700, and the point is an ordinary 0755
    # directory that a sandbox uid could traverse but that bwrap would hide under /tmp.
    parent = Path(tempfile.mkdtemp(prefix="newcomer-", dir="/tmp"))
    try:
        os.chmod(parent, 0o755)
        checkout = parent / "sandbox-toolbox"
        subprocess.run(["git", "clone", "--quiet", str(REPO_ROOT), str(checkout)], check=True,
                       timeout=120)
        yield checkout
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def _start_use_stop(checkout: Path, state_dir: Path, timeout: float) -> float:
    began = time.monotonic()
    stack = start_stack(state_dir, checkout=checkout, pool_size=1, timeout=timeout)
    banner_after = time.monotonic() - began
    try:
        created = stack.cli("create", "--name", "fresh")
        assert created["state"] == "started" and created["name"] == "fresh"
        assert stack.execute(created["id"], "echo hello from $DAYTONA_SANDBOX_ID; python3 -c 'print(6*7)'") \
            == (0, f"hello from {created['id']}\n42\n")
        assert stack.execute(stack.first_id, "pwd") == (0, "/home/daytona\n")
    finally:
        assert stack.stop() == 0
    return banner_after


def test_readme_start_in_a_fresh_clone_under_tmp(clone: Path, tmp_path: Path) -> None:
    assert not (clone / ".venv").exists()
    assert oct(clone.parent.stat().st_mode & 0o777) == "0o755"
    first = _start_use_stop(clone, tmp_path / "state", timeout=600)
    assert (clone / ".venv" / "bin" / "python").exists()
    # Warm: the venv is there, the state dir (and its first sandbox) survive.
    second = _start_use_stop_warm(clone, tmp_path / "state")
    print(f"\n./scripts/start in a fresh clone: {first:.1f} s to the banner with venv creation, "
          f"{second:.1f} s warm")
    assert second < 30


def _start_use_stop_warm(checkout: Path, state_dir: Path) -> float:
    began = time.monotonic()
    stack = start_stack(state_dir, checkout=checkout, pool_size=1, timeout=60)
    banner_after = time.monotonic() - began
    try:
        started = stack.cli("start", "fresh")  # by name, as a person would
        assert started["state"] == "started"
        assert stack.execute(started["id"], "cat /etc/hostname") == (0, "sandbox\n")
    finally:
        assert stack.stop() == 0
    return banner_after


def test_start_from_a_checkout_in_a_private_0700_directory(clone: Path, tmp_path: Path) -> None:
    # mkdtemp's 0700: the sandbox uid cannot traverse it, yet sandboxes get the code at
    # /opt/sandbox-toolbox. The venv is the first clone's, so no second install is needed.
    subprocess.run(["bash", "-c", ". scripts/venv.sh"], cwd=clone, check=True, timeout=600)
    private = Path(tempfile.mkdtemp(prefix="newcomer-private-", dir="/tmp"))
    try:
        assert private.stat().st_mode & 0o777 == 0o700
        checkout = private / "sandbox-toolbox"
        subprocess.run(["git", "clone", "--quiet", str(REPO_ROOT), str(checkout)], check=True, timeout=120)
        (checkout / ".venv").symlink_to(clone / ".venv")
        stack = start_stack(tmp_path / "state", checkout=checkout, pool_size=1)
        try:
            probe = "import toolbox, runtime.codemount as c; print(toolbox.__file__, c.REPO_ROOT)"
            # The daemon's interpreter and path (with an own root, `python3` is the snapshot's
            # and PYTHONPATH is the daemon's alone).
            command = f"PYTHONPATH=/opt/sandbox-toolbox/lib {DAEMON_PYTHON} -c '{probe}'"
            assert stack.execute(stack.first_id, command) == (
                0, "/opt/sandbox-toolbox/lib/toolbox/__init__.py /opt/sandbox-toolbox/lib\n")
        finally:
            assert stack.stop() == 0
    finally:
        shutil.rmtree(private, ignore_errors=True)
