"""Snapshots for tests: one default snapshot per machine, lower-layer checksums, overlays.

`shared_layers_dir()` is the layers dir every test stack uses (RUNTIME_LAYERS_DIR, set by
tests/runtime_helpers.start_stack): /var/tmp/sandbox-toolbox-test-layers, or
$SANDBOX_TOOLBOX_TEST_LAYERS. The default snapshot is built there on first use (about a
minute, once per machine: every test process, every checkout on this machine, shares it;
SnapshotStore's build lock makes the others wait rather than build again) and found in
milliseconds after that.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from runtime.codemount import PYVENV_CFG, code_mount
from runtime.snapshots import Snapshot, SnapshotStore, tree_digest
from tests.proxy_helpers import stop

DEFAULT_DIR = Path("/var/tmp/sandbox-toolbox-test-layers")
ENV = "SANDBOX_TOOLBOX_TEST_LAYERS"


def shared_layers_dir() -> Path:
    return Path(os.environ.get(ENV) or DEFAULT_DIR)


_built: tuple[SnapshotStore, Snapshot] | None = None


def _store() -> SnapshotStore:
    layers = shared_layers_dir()
    return SnapshotStore(layers / ".test-state", layers_dir=layers)


def default_is_built() -> bool:
    from runtime.rootfs import build_key

    return _store().cached_build(build_key()) is not None


def shared_default(progress: Callable[[str], None] | None = None) -> tuple[SnapshotStore, Snapshot]:
    """The store on the shared layers dir (its snapshot records in a state dir of its own
    there) and the default snapshot, built if this machine has none yet (tests/conftest.py
    does that before the first test)."""
    global _built
    if _built is None:
        store = _store()
        _built = store, store.ensure_default(progress or (
            lambda line: print(f"[test layers] {line}", file=sys.stderr, flush=True)))
    return _built


def default_snapshot() -> tuple[SnapshotStore, Snapshot]:
    """shared_default() for a test, skipped where it cannot be built (not root)."""
    if os.geteuid() != 0:
        with contextlib.suppress(Exception):
            return shared_default()
        pytest.skip("building the default snapshot needs root (debootstrap)")
    return shared_default()


def layer_checksum(path: Path) -> str:
    """The hash of a layer's whole tree: paths, types, modes, owners, mtimes, contents,
    device numbers, xattrs. Take it before and after a test to prove the test's sandboxes
    never modified the shared lower layer."""
    return tree_digest(path)[0]


@contextlib.contextmanager
def overlay(lower_dirs: list[Path], scratch: Path) -> Iterator[Path]:
    """A merged overlay of `lower_dirs` (top first) with an upper layer in `scratch`, as a
    sandbox's root would be (root only); unmounted afterwards."""
    upper, work, merged = scratch / "upper", scratch / "work", scratch / "merged"
    for d in (upper, work, merged):
        d.mkdir(parents=True, exist_ok=True)
    options = f"lowerdir={':'.join(map(str, lower_dirs))},upperdir={upper},workdir={work}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(merged)], check=True)
    try:
        yield merged
    finally:
        subprocess.run(["umount", "--lazy", str(merged)], check=False)


@contextlib.contextmanager
def daemon_in(root: Path, tmp: Path, env: dict[str, str] | None = None) -> Iterator[httpx.Client]:
    """The real daemon, started as the runtime starts it (`runtime.entry` through
    code_mount's launcher, claimed over stdin, serving on a socket bound here and passed
    in as $TOOLBOX_FD) with `root` as /; a client of it."""
    import json
    import socket

    cfg = tmp / "pyvenv.cfg"
    cfg.write_text(PYVENV_CFG)
    code = code_mount(sys.executable, cfg, host_root=False)
    path = tmp / "toolbox.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    argv = ["bwrap", "--bind", str(root), "/", "--proc", "/proc", "--dev", "/dev",
            "--perms", "1777", "--tmpfs", "/tmp", *code.argv, "--unshare-pid", "--die-with-parent",
            "--clearenv", "--setenv", "HOME", "/tmp", "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin",
            "--setenv", "TOOLBOX_FD", str(listener.fileno())]
    for key, value in {**code.env, **(env or {})}.items():
        argv += ["--setenv", key, value]
    argv += ["--chdir", "/tmp", "--", code.python, "-m", "runtime.entry"]
    log = open(tmp / "daemon.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                               pass_fds=[listener.fileno()])
    assert process.stdin is not None and process.stdout is not None
    try:
        assert process.stdout.readline() == b"pooled\n", (tmp / "daemon.log").read_text()
        process.stdin.write(json.dumps({"id": "sbx-root", "env": {}}).encode() + b"\n")
        process.stdin.flush()
        client = httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://toolbox", timeout=30)
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (tmp / "daemon.log").read_text()
            try:
                if client.get("/version").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp / "daemon.log").read_text()
            time.sleep(0.1)
        yield client
        client.close()
    finally:
        listener.close()
        stop(process)
        log.close()


# What the code-run chart tests (tests/test_execute_artifacts.py) need in a sandbox's own
# python3, layered on the default snapshot once per machine rather than in every snapshot.
# From PyPI's wheels (matplotlib, numpy, pillow, ...: about 40 s and 150 MB here) rather
# than Debian's python3-matplotlib, which pulls in scipy, sympy and pythran (305 s, 940 MB).
MATPLOTLIB = "test-matplotlib"
MATPLOTLIB_SCRIPT = ("echo 'step: pip install matplotlib'\n"
                     "python3 -m pip install -q --no-cache-dir --break-system-packages --root-user-action=ignore "
                     "matplotlib\nrm -rf /root/.cache\n")


@functools.lru_cache(maxsize=8)
def shared_snapshot(name: str = MATPLOTLIB, script: str = MATPLOTLIB_SCRIPT) -> Snapshot:
    """Snapshot `name`: the default one plus a layer `script` makes (sh, as root, in the
    snapshot's root), built once per machine on the shared layers dir and cached there."""
    from runtime.rootfs import ensure_layered

    store, base = shared_default()
    return ensure_layered(store, name, base, script, lambda line: print(
        f"[test layers] {line}", file=sys.stderr, flush=True))


def install_snapshot(state_dir: Path, snapshot: Snapshot) -> None:
    """Make a shared snapshot known to the stack on `state_dir` (its record in that state
    dir's snapshots; the layers stay in the shared dir), before or while it runs."""
    SnapshotStore(state_dir, layers_dir=shared_layers_dir()).put(snapshot)
