"""The snapshot sandboxes with their own root are made from, for tests.

The real store (runtime/snapshots.py) with the default snapshot, built once per machine in
the shared layer cache; until that store is on this branch, a debootstrap root at
RUNTIME_TEST_ROOTFS (one layer, the same shape: root 0, daytona 1000 with NOPASSWD sudo)."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

DEV_ROOT = Path(os.environ.get("RUNTIME_TEST_ROOTFS", "/var/tmp/i15core/rootfs"))


@dataclass(frozen=True)
class _Snapshot:
    name: str
    layers: tuple[str, ...]


class DirSnapshots:
    """One snapshot, `default`, of one layer: a prepared root directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def get(self, name: str) -> _Snapshot:
        if name != "default":
            raise KeyError(name)
        return _Snapshot(name, ("dev-root",))

    def layer_path(self, digest: str) -> Path:
        assert digest == "dev-root"
        return self.root


def default_snapshots() -> Any:
    try:
        module = importlib.import_module("runtime.snapshots")
    except ImportError:
        if not (DEV_ROOT / "etc" / "passwd").exists():
            pytest.fail(f"no snapshot store yet and no root at {DEV_ROOT} (RUNTIME_TEST_ROOTFS)")
        return DirSnapshots(DEV_ROOT)
    store = module.SnapshotStore(Path(os.environ.get("RUNTIME_TEST_STATE", "/var/tmp/sandbox-toolbox-test-snapshots")))
    store.ensure_default()
    return store
