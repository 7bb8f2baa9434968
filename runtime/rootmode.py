"""Which root file system sandboxes get: "host" (bwrap over the host's read-only root) or
"snapshot" (each its own root from a snapshot, root inside, a disk quota; docs/runtime.md).
One function decides the default, for the CLI, the runtime and the tests alike."""

from __future__ import annotations

import os

ROOTFS_MODES = ("host", "snapshot")
ROOTFS_ENV = "RUNTIME_ROOTFS"


def default_rootfs_mode() -> str:
    """RUNTIME_ROOTFS, else the default: "snapshot" as root; "host" otherwise, where the
    65,536-id user namespace of an own root cannot be made."""
    return os.environ.get(ROOTFS_ENV) or ("snapshot" if os.geteuid() == 0 else "host")
