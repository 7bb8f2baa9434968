"""Build contexts from the SDK's uploads (`buildInfo.contextHashes`, control-plane-api.md
§4.3): each `{organization}/{hash}/context.tar` is fetched from the object storage,
unpacked with every member checked, its content checked against the hash it is named by
(contexthash.py: another organization may have put it there), and merged at the context
root as upstream's builder does (directory entries are not created). The build's COPY
then reads from that directory (runtime/images/context.py).

A tar is a tenant's bytes: no absolute name, no `..`, nothing outside the upload's own
archive path, no symlink leaving the context or written through, hard links become copies,
no devices or FIFOs, and sizes and entry counts are bounded."""

from __future__ import annotations

import functools
import os
import re
import shutil
import stat
import tarfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path, PurePosixPath
from typing import Protocol

import anyio

from controlplane.snapshots import contexthash
from controlplane.snapshots.contexthash import Tree

MAX_BYTES = 4 << 30  # all contexts of one build, unpacked
MAX_ENTRIES = 100_000
HASH = re.compile(r"^[0-9a-f]{32}$")
CHUNK = 1 << 20


class ContextError(Exception):
    """The context cannot be used; the message is the build's errorReason."""


class ContextStorage(Protocol):
    # True: only the organization itself can have written its keys (its own credentials).
    isolated: bool

    async def fetch(self, organization_id: str, key: str, scratch: Path) -> Path | None:
        """The organization's object at `key` as a local file (`scratch` if it had to be
        downloaded), or None."""


def key(organization_id: str, context_hash: str) -> str:
    return f"{organization_id}/{context_hash}/context.tar"


class _Limits:
    def __init__(self) -> None:
        self.bytes = MAX_BYTES
        self.entries = MAX_ENTRIES

    def take(self, size: int) -> None:
        self.bytes -= size
        self.entries -= 1
        if self.bytes < 0:
            raise ContextError(f"the build contexts are larger than {MAX_BYTES >> 20} MiB unpacked")
        if self.entries < 0:
            raise ContextError(f"the build contexts have more than {MAX_ENTRIES} entries")


def _name(raw: str) -> PurePosixPath:
    path = PurePosixPath(raw)
    if path.is_absolute() or ".." in path.parts or not path.parts or "\0" in raw:
        raise ContextError(f"the upload has an entry named {raw!r}, outside the context")
    return path


def _parent(root: Path, relative: PurePosixPath) -> Path:
    """`relative`'s directory under `root`, made; a symlink on the way is never gone through."""
    path = root
    for part in relative.parts[:-1]:
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            os.mkdir(path, 0o755)
            continue
        if not stat.S_ISDIR(mode):
            raise ContextError(f"the upload writes {relative} through {path.relative_to(root)}, which is not a "
                               "directory")
    return path


def _replace(target: Path) -> None:
    """Make room for an entry at `target` (a later entry wins, as in a tar; a directory stays)."""
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        raise ContextError(f"the upload has a file where a directory is: {target.name}")
    os.unlink(target)


def _link_inside(name: PurePosixPath, target: str) -> None:
    resolved = os.path.normpath(os.path.join(str(name.parent), target))
    if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
        raise ContextError(f"the upload's symlink {name} -> {target} leaves the context")


def unpack(tar_path: Path, dest: Path, expected: str, limits: _Limits | None = None, *,
           isolated: bool = False) -> tuple[int, int, bool]:
    """Unpack one upload into `dest` (a new directory) and check it is what `expected`
    names; (files, bytes, checked). `isolated`: only its organization could have written
    it, so one whose orders are too many to try is used unchecked (a mismatch never is)."""
    limits = limits or _Limits()
    dest.mkdir(mode=0o700)
    archive: PurePosixPath | None = None
    is_file = False
    files: dict[PurePosixPath, int] = {}  # name -> size, for hard links
    dirs: set[PurePosixPath] = set()
    links: dict[PurePosixPath, str] = {}
    total = 0
    try:
        tar = tarfile.open(tar_path, mode="r:")  # uncompressed only, as the SDK sends it
    except (tarfile.TarError, OSError) as exc:
        raise ContextError(f"the upload is not a tar archive ({exc})") from None
    with tar:
        try:
            for member in tar:
                name = _name(member.name)
                limits.take(member.size if member.isreg() else 0)
                if archive is None:
                    archive, is_file = name, member.isreg()
                elif is_file or not name.is_relative_to(archive) or name == archive:
                    raise ContextError(f"the upload of {archive} also has {name}")
                if member.isdir():
                    dirs.add(name)
                    continue
                parent = _parent(dest, name)
                target = parent / name.name
                _replace(target)
                files.pop(name, None)
                links.pop(name, None)
                if member.isreg():
                    source = tar.extractfile(member)
                    assert source is not None
                    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                    with os.fdopen(fd, "wb") as out, source:
                        shutil.copyfileobj(source, out, CHUNK)
                    os.chmod(target, member.mode & 0o777)
                    files[name] = member.size
                    total += member.size
                elif member.issym():
                    _link_inside(name, member.linkname)
                    os.symlink(member.linkname, target)
                    links[name] = member.linkname
                elif member.islnk():  # a copy of an earlier file of this upload
                    origin = _name(member.linkname)
                    if origin not in files:
                        raise ContextError(f"the upload's hard link {name} -> {origin} is not to one of its files")
                    limits.take(files[origin])
                    shutil.copyfile(dest / origin, target, follow_symlinks=False)
                    os.chmod(target, os.stat(dest / origin).st_mode & 0o777)
                    files[name] = files[origin]
                    total += files[origin]
                else:
                    raise ContextError(f"the upload has {name}, which is neither a file, a directory nor a symlink")
        except tarfile.TarError as exc:
            raise ContextError(f"the upload is not a valid tar archive ({exc})") from None
    if archive is None:
        raise ContextError("the upload is an empty archive")
    _check_links(dest, links)
    checked = _verify(dest, archive, is_file, expected, set(files) | set(links), dirs, isolated)
    return len(files), total, checked


def _check_links(dest: Path, links: dict[PurePosixPath, str]) -> None:
    """Every symlink, followed to the end (through other symlinks), stays inside `dest`."""
    root = os.path.realpath(dest)
    for name in links:
        real = os.path.realpath(dest / name)
        if real != root and not real.startswith(root + os.sep):
            raise ContextError(f"the upload's symlink {name} leaves the context")


def _verify(dest: Path, archive: PurePosixPath, is_file: bool, expected: str,
            entries: set[PurePosixPath], dirs: set[PurePosixPath], isolated: bool) -> bool:
    if is_file:
        content: Path | Tree = dest / archive
    else:
        content = _tree(dest, archive, entries, dirs)
    try:
        ok = contexthash.matches(expected, str(archive), content)
    except contexthash.Unverifiable:
        if isolated:
            return False
        raise ContextError(f"the upload {expected} could not be checked against its hash: its directories list "
                           "too many entries for the orders the SDK may have hashed them in to be tried; upload "
                           "smaller directories (add_local_dir of each) or fewer files per directory") from None
    except OSError as exc:  # a symlink to a directory read as a file, a dangling one, ...
        raise ContextError(f"the upload {expected} could not be hashed as the SDK does ({exc.strerror})") from None
    if not ok:
        raise ContextError(f"the uploaded context {archive} does not match its hash {expected}: it is not the "
                           "content the SDK uploaded under that name (another organization may have put it there); "
                           "it was not used")
    return True


def _tree(dest: Path, archive: PurePosixPath, entries: set[PurePosixPath], dirs: set[PurePosixPath]) -> Tree:
    """The directory upload as os.walk on the client saw it."""
    trees: dict[PurePosixPath, Tree] = {}

    def tree(path: PurePosixPath) -> Tree:
        found = trees.get(path)
        if found is None:
            rel = path.relative_to(archive)
            found = trees[path] = Tree(str(rel))
            if path != archive:
                tree(path.parent).dirs.append(found)
        return found

    tree(archive)
    for name in dirs:
        tree(name)
    for name in entries:
        parent = tree(name.parent)
        if os.path.isdir(dest / name):  # a symlink to a directory: listed, not walked
            parent.opaque += 1
        else:
            parent.files.append((str(name.relative_to(archive)), dest / name))
    return trees[archive]


def merge(source: Path, root: Path) -> None:
    """Move one unpacked upload into the context root; a later upload's file wins."""
    for parent, dirnames, filenames in os.walk(source):
        here = Path(parent)
        for name in [*filenames, *(d for d in dirnames if (here / d).is_symlink())]:
            relative = PurePosixPath((here / name).relative_to(source).as_posix())
            target = _parent(root, relative) / relative.name
            _replace(target)
            os.rename(here / name, target)


class BuildContexts:
    """The context directory of a build from the SDK's uploads; removed when the build ends."""

    def __init__(self, storage: Callable[[], Awaitable[ContextStorage]], scratch: Path) -> None:
        self.storage = storage  # waits for the object storage to be up; raises why it is not
        self.scratch = scratch

    def clean(self) -> None:
        """What a dead process left."""
        shutil.rmtree(self.scratch, ignore_errors=True)

    @asynccontextmanager
    async def prepared(self, organization_id: str, hashes: tuple[str, ...],
                       log: Callable[[str], None]) -> AsyncIterator[Path]:
        storage = await self.storage()
        self.scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
        work = self.scratch / uuid.uuid4().hex
        work.mkdir(mode=0o700)
        try:
            root = work / "context"
            root.mkdir()
            limits = _Limits()
            for index, context_hash in enumerate(hashes):
                tar = await storage.fetch(organization_id, key(organization_id, context_hash), work / f"{index}.tar")
                if tar is None:
                    raise ContextError(f"the build context {context_hash} was never uploaded (no "
                                       f"{key(organization_id, context_hash)} in the object storage)")
                count, size, checked = await anyio.to_thread.run_sync(
                    functools.partial(unpack, tar, work / str(index), context_hash, limits, isolated=storage.isolated))
                await anyio.to_thread.run_sync(merge, work / str(index), root)
                log(f"Context {context_hash}: {count} file(s), {size / 1e6:.1f} MB, " + (
                    "matches its hash" if checked else "too many listing orders to check its hash; used as "
                    "only this organization can have written it"))
            yield root
        finally:
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(work, ignore_errors=True))
