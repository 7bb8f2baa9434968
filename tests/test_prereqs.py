"""./scripts/start checks what the main job needs from the system before the long pip
install, and says how to get it (issue 14). "Missing" is simulated with a PATH that holds
everything of the machine's but the tool in question."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT, free_port
from tests.runtime_helpers import needs_bwrap


def _path_without(tmp_path: Path, *tools: str) -> str:
    """A PATH like ours minus `tools`: one directory of links to every other command."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if not directory or not Path(directory).is_dir():
            continue
        for entry in Path(directory).iterdir():
            link = bin_dir / entry.name
            if entry.name not in tools and not link.exists() and os.access(entry, os.X_OK):
                link.symlink_to(entry)
    return str(bin_dir)


def _start(tmp_path: Path, path: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = dict(os.environ, PATH=path, RUNTIME_STATE_DIR=str(tmp_path / "state"),
               RUNTIME_PROXY_PORT=str(free_port()))
    began = time.monotonic()
    result = subprocess.run([str(REPO_ROOT / "scripts" / "start")], env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    return result, time.monotonic() - began


@pytest.mark.skipif(os.geteuid() != 0, reason="the message names apt-get without sudo as root")
def test_start_without_bubblewrap_names_the_package_at_once(tmp_path: Path) -> None:
    result, took = _start(tmp_path, _path_without(tmp_path, "bwrap"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: the main job needs bubblewrap: apt-get install bubblewrap"], result.stderr
    assert took < 10  # before, not after, the venv and the runtime
    assert not (tmp_path / "state").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="setpriv is only needed as root")
@needs_bwrap
def test_start_without_setpriv_names_util_linux(tmp_path: Path) -> None:
    result, _ = _start(tmp_path, _path_without(tmp_path, "setpriv"))
    assert result.returncode == 1
    assert result.stderr.strip() == "error: the main job needs util-linux: apt-get install util-linux"


def test_start_where_bubblewrap_cannot_make_namespaces_says_so(tmp_path: Path) -> None:
    path = _path_without(tmp_path, "bwrap")
    fake = Path(path) / "bwrap"  # what bwrap says in a container without the privileges
    fake.write_text("#!/bin/sh\necho 'bwrap: Creating new namespace failed: Operation not permitted' >&2\nexit 1\n")
    fake.chmod(0o755)
    result, _ = _start(tmp_path, path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: bubblewrap cannot create a sandbox here (bwrap: Creating new namespace failed: "
        "Operation not permitted): "), result.stderr


def test_venv_without_python3_names_the_packages(tmp_path: Path) -> None:
    # scripts/venv.sh in an empty directory, as a fresh clone has it, without python3.
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "scripts" / "venv.sh", checkout / "scripts")
    shutil.copy(REPO_ROOT / "pyproject.toml", checkout)
    path = _path_without(tmp_path, "python3")
    result = subprocess.run(["bash", "-c", "set -eu; . scripts/venv.sh"], cwd=checkout,
                            env=dict(os.environ, PATH=path), capture_output=True, text=True, timeout=30,
                            check=False)
    assert result.returncode == 1
    sudo = "" if os.geteuid() == 0 else "sudo "
    assert result.stderr.strip() == (f"error: python3 (3.11 or newer) is not installed: "
                                     f"{sudo}apt-get install python3 python3-venv")
    assert not (checkout / ".venv").exists()


def test_a_test_run_without_a_system_tool_skips_and_names_the_package(tmp_path: Path) -> None:
    import sys

    # git's tests, on a machine without git: skipped (not failed, not errors), and the run's
    # last line says what to install.
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "tests/test_git_auth.py"], cwd=REPO_ROOT, capture_output=True, text=True,
                            env=dict(os.environ, PATH=_path_without(tmp_path, "git")), timeout=120,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert "failed" not in lines[-2] and "error" not in lines[-2] and "skipped" in lines[-2], lines[-2]
    assert lines[-1] == ("Skipped for missing system packages; to run them: apt-get install git "
                         "(or `bash .ci/run`, which installs everything and runs the suite)")
    assert "SKIPPED" in result.stdout and "git not installed (apt-get install git)" in result.stdout
