"""`./scripts/start` builds the default snapshot on its first start and shows its progress;
a build that fails says where, in one line, and leaves nothing half-built behind."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT, free_port
from tests.runtime_helpers import needs_bwrap

pytestmark = [needs_bwrap, pytest.mark.skipif(os.geteuid() != 0, reason="the default snapshot is built as root")]


def test_a_first_start_shows_the_build_and_a_failed_build_leaves_nothing(tmp_path: Path) -> None:
    layers = tmp_path / "layers"
    # A mirror nobody answers on: debootstrap starts (its progress is shown), then fails.
    with socket_nobody_listens_on() as port:
        env = dict(os.environ, RUNTIME_STATE_DIR=str(tmp_path / "state"), RUNTIME_LAYERS_DIR=str(layers),
                   RUNTIME_DEBIAN_MIRROR=f"http://127.0.0.1:{port}/debian", RUNTIME_PROXY_PORT=str(free_port()),
                   RUNTIME_POOL_SIZE="0", RUNTIME_NETWORK_BLOCK_ALL="1", PYTHONUNBUFFERED="1")
        result = subprocess.run([str(REPO_ROOT / "scripts" / "start")], env=env, cwd=REPO_ROOT,
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert (f"default snapshot: debootstrap --variant=minbase bookworm from http://127.0.0.1:{port}/debian "
            "(first start only)") in result.stdout.splitlines()
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors and errors[0].startswith("error: building the default snapshot failed in debootstrap"), result.stderr
    assert "Traceback" not in result.stderr
    # Nothing published, no temporary tree left, no snapshot record.
    leftovers = [p.name for p in layers.iterdir() if not p.name.startswith((".meta", ".builds"))]
    assert leftovers == []
    assert not list((layers / ".builds").glob("*.json"))
    assert not list((tmp_path / "state" / "snapshots").glob("*.json"))


class socket_nobody_listens_on:  # noqa: N801 - a context manager used like a function
    """A port bound (so nothing else takes it) but never listened on: connections are refused."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
