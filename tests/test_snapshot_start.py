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
    assert (f"default snapshot: debian:bookworm-slim: debootstrap --variant=minbase bookworm from "
            f"http://127.0.0.1:{port}/debian (first start only)") in result.stdout.splitlines()
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors and errors[0].startswith("error: the default snapshot: building debian:bookworm-slim failed in debootstrap"), result.stderr
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


def test_a_runtime_killed_mid_build_leaves_no_step_running_and_the_next_build_cleans_up(tmp_path: Path) -> None:
    """SIGKILL of the process that builds (a main job killed while debootstrap waits on
    the mirror): every build step dies with it, and the next build removes the tree."""
    import signal
    import socket
    import sys
    import time

    from runtime.snapshots import SnapshotStore

    layers = tmp_path / "layers"
    with socket.socket() as mirror:  # accepts connections, never answers: debootstrap waits
        mirror.bind(("127.0.0.1", 0))
        mirror.listen(8)
        env = dict(os.environ, RUNTIME_DEBIAN_MIRROR=f"http://127.0.0.1:{mirror.getsockname()[1]}/debian")
        code = ("import sys; from pathlib import Path; from runtime.snapshots import SnapshotStore; "
                f"SnapshotStore(Path({str(tmp_path / 'state')!r}), layers_dir=Path({str(layers)!r})).ensure_default()")
        builder = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO_ROOT)
        try:
            deadline = time.monotonic() + 60
            while not _steps_in(layers):
                assert builder.poll() is None and time.monotonic() < deadline, "debootstrap never started"
                time.sleep(0.1)
        finally:
            builder.send_signal(signal.SIGKILL)
            builder.wait()
        deadline = time.monotonic() + 10
        while _steps_in(layers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _steps_in(layers), "a build step outlived the process that ran it"
    assert list(layers.glob(".tmp-*")), "the killed build's tree is there until the next build"
    SnapshotStore(tmp_path / "state", layers_dir=layers).clean_partial()
    assert not list(layers.glob(".tmp-*"))


def _steps_in(layers: Path) -> list[int]:
    """Processes whose command line names a build tree in `layers` (debootstrap, its helpers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if f"{layers}/.tmp-".encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found
