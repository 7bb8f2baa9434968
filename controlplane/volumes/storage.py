"""Where volumes' files live: one directory per volume under `STATE/volumes/`.

The directories are made by `runtime.volumes` (a gid of their own per volume, setgid,
0700 parent), and subpaths are created without following anything a sandbox planted; the
backend later binds them by file descriptor. Deleting uses `remove_volume`, which walks
by file descriptor and never follows a symlink a sandbox left in the volume.
"""

from __future__ import annotations

from pathlib import Path

from runtime.volumes import MountError, make_subpath, make_volume, remove_volume


class VolumeStorage:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, volume_id: str) -> Path:
        return self.root / volume_id

    def create(self, volume_id: str) -> None:
        make_volume(self.path(volume_id))

    def source(self, volume_id: str, subpath: str) -> Path:
        """The host directory to mount for `subpath` of the volume (created if missing).
        Raises `MountError` (a 400) when the subpath cannot be made safely."""
        return make_subpath(self.path(volume_id), subpath)

    def delete(self, volume_id: str) -> None:
        path = self.path(volume_id)
        if path.exists() or path.is_symlink():
            remove_volume(path)

    def ids(self) -> set[str]:
        if not self.root.is_dir():
            return set()
        return {entry.name for entry in self.root.iterdir() if not entry.name.startswith(".")}


__all__ = ["MountError", "VolumeStorage"]
