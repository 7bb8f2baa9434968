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
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.snapshots import Snapshot, SnapshotStore, tree_digest

DEFAULT_DIR = Path("/var/tmp/sandbox-toolbox-test-layers")
ENV = "SANDBOX_TOOLBOX_TEST_LAYERS"


def shared_layers_dir() -> Path:
    return Path(os.environ.get(ENV) or DEFAULT_DIR)


@functools.lru_cache(maxsize=1)
def shared_default() -> tuple[SnapshotStore, Snapshot]:
    """The store on the shared layers dir (its snapshot records in a state dir of its own
    there) and the default snapshot, built if this machine has none yet."""
    layers = shared_layers_dir()
    store = SnapshotStore(layers / ".test-state", layers_dir=layers)
    snapshot = store.ensure_default(lambda line: print(f"[test layers] {line}", file=sys.stderr, flush=True))
    return store, snapshot


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


# What the code-run chart tests (tests/test_execute_artifacts.py) need in a sandbox's own
# python3, layered on the default snapshot once per machine rather than in every snapshot.
MATPLOTLIB = "test-matplotlib"
MATPLOTLIB_PACKAGES = ("python3-matplotlib",)


@functools.lru_cache(maxsize=8)
def shared_snapshot(name: str = MATPLOTLIB, packages: tuple[str, ...] = MATPLOTLIB_PACKAGES) -> Snapshot:
    """Snapshot `name`: the default one plus Debian `packages`, built once per machine on
    the shared layers dir (about 30 s for matplotlib) and cached there."""
    from runtime.rootfs import apt_script, ensure_layered

    store, base = shared_default()
    return ensure_layered(store, name, base, apt_script(packages), lambda line: print(
        f"[test layers] {line}", file=sys.stderr, flush=True))


def install_snapshot(state_dir: Path, snapshot: Snapshot) -> None:
    """Make a shared snapshot known to the stack on `state_dir` (its record in that state
    dir's snapshots; the layers stay in the shared dir), before or while it runs."""
    SnapshotStore(state_dir, layers_dir=shared_layers_dir()).put(snapshot)
