"""The snapshot store sandboxes with their own root are made from, for tests: the store on
the machine-wide shared layers dir, with the default snapshot built there once (the same
dir and records as tests/layer_helpers.py, i15snap's; this module goes once that one is
on this branch)."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

from runtime.snapshots import SnapshotStore

DEFAULT_DIR = Path("/var/tmp/sandbox-toolbox-test-layers")


@functools.lru_cache(maxsize=1)
def default_snapshots() -> SnapshotStore:
    layers = Path(os.environ.get("SANDBOX_TOOLBOX_TEST_LAYERS") or DEFAULT_DIR)
    store = SnapshotStore(layers / ".test-state", layers_dir=layers)
    store.ensure_default(lambda line: print(f"[test layers] {line}", file=sys.stderr, flush=True))
    return store
