"""COPY (and plain ADD) from a build context directory into a new layer's tree.

The context is a directory on the host (an operator's checkout; later, contexts the SDK
uploads, extracted): every source must stay inside it, no symlink on the way out is
followed (a symlink inside is copied as a symlink), and the copied files are owned by
root (0:0) with their modes kept, as docker does without --chown."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path, PurePosixPath


class ContextError(ValueError):
    pass


def source_path(context: Path, name: str) -> Path:
    """`name` inside `context`, refusing what leaves it (.., absolute, symlinked parents)."""
    relative = PurePosixPath(name.lstrip("/"))
    if ".." in relative.parts:
        raise ContextError(f"COPY source {name!r} leaves the build context")
    path = context
    for part in relative.parts:
        path = path / part
        if path.is_symlink() and part != relative.parts[-1]:
            raise ContextError(f"COPY source {name!r} goes through a symlink")
    if not os.path.lexists(path):
        raise ContextError(f"COPY source {name!r} is not in the build context")
    return path


def digest(paths: list[Path]) -> str:
    """What the sources are: relative names, types, modes, contents (the step's cache key)."""
    h = hashlib.sha256()
    for source in paths:
        entries = [source] if not source.is_dir() or source.is_symlink() else sorted(
            [source, *source.rglob("*")])
        for entry in entries:
            st = os.lstat(entry)
            h.update(f"{entry.relative_to(source.parent)}\0{st.st_mode:o}\0".encode())
            if stat.S_ISREG(st.st_mode):
                with open(entry, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
            elif stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(entry).encode())
    return h.hexdigest()


def copy_into(tree: Path, sources: list[Path], destination: str, workdir: str) -> None:
    """Docker's rules: a directory source copies its contents; several sources, or a
    destination ending in /, go into a directory; a relative destination is under WORKDIR."""
    dest = PurePosixPath(workdir) / destination
    if ".." in dest.parts:
        raise ContextError(f"COPY destination {destination!r} with '..' is not supported")
    into_dir = destination.endswith("/") or len(sources) > 1 or any(s.is_dir() and not s.is_symlink()
                                                                    for s in sources)
    target = tree / str(dest).lstrip("/")
    for source in sources:
        if source.is_dir() and not source.is_symlink():
            shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True)
        else:
            place = target / source.name if into_dir else target
            place.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, place, follow_symlinks=False)
    for parent, dirs, files in os.walk(tree):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(parent, name), 0, 0)
    os.chown(tree, 0, 0)
