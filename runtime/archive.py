"""Archive a stopped sandbox's files into one tar + zstd file, and restore them.

What is packed: everything of a sandbox the sandbox can write, `home/`, `tmp/` and `run/`
(the daemon's socket dir; tar skips the socket itself). `etc/` is regenerated at every
start, and `daemon.log` is the host's. The archive
goes to `STATE/archives/<id>.tar.zst`, 0600 in a 0700 root directory the sandbox never
sees (the state root is a tmpfs inside every sandbox).

**Why root may run tar here.** GNU tar runs as root so ownership comes back exact (bwrap's
root-owned mount points included), and both directions are safe against a hostile tree:

- *Packing* happens only while the sandbox is stopped (no process of it can change the
  tree under tar), and tar never dereferences a symlink unless told (`-h`): a planted
  `home/x -> /etc` is stored as a symlink. `--one-file-system` keeps it from crossing into
  anything mounted there. A hard link to a host file can only exist if the host made it
  (the sandbox's binds are separate mounts, so link(2) across them is EXDEV, and
  `fs.protected_hardlinks` forbids linking others' files); it is stored with its owner and
  mode, so after a restore it is a separate root-owned copy the sandbox still cannot read.
- *Unpacking* reads only archives we wrote (0600 root), into a fresh 0700 staging
  directory, while the sandbox is not running. The archive can only hold what one
  consistent tree held, so no member path goes through a symlink member; and GNU tar
  extracts symlinks that are absolute or contain `..` as placeholders that become
  symlinks only at the very end, so even a crafted archive could not write through one.

**Crash safety.** The archive is written to a `.partial` file, fsynced, then renamed; the
spec says `archived` (fsynced) only after that, and only then are the originals removed.
`sweep` (at runtime start) removes partials and archives no spec claims, and finishes an
interrupted removal. Restoring extracts next to the originals' place and renames into it;
the archive is deleted only once the spec says `stopped` again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

# Everything the sandbox's uid may write; sockets are skipped. A sandbox with its own root
# (runtime/rootfs.py) has only disk.img: one sparse file, so the host never walks a tree the
# sandbox wrote, and holes stay holes (--sparse).
PACKED = ("home", "tmp", "run", "disk.img")
SUFFIX = ".tar.zst"
STAGING = ".restore"
# posix (pax) keeps nanosecond mtimes, long names and xattrs; --sparse keeps holes.
COMMON = ["--zstd", "--format=posix", "--numeric-owner", "--xattrs", "--acls"]


class ArchiveError(Exception):
    pass


def fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, (os.O_RDONLY | os.O_DIRECTORY) if directory else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def _run_tar(args: list[str], stdout: int | None = None) -> None:
    process = await asyncio.create_subprocess_exec(
        "tar", *args, stdin=asyncio.subprocess.DEVNULL,
        stdout=stdout if stdout is not None else asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
    )
    try:
        _, err = await process.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        raise ArchiveError(f"tar failed (exit {process.returncode}): {err.decode(errors='replace').strip()[-500:]}")


async def pack(sandbox_dir: Path, dest: Path) -> int:
    """Write `dest` (complete and fsynced, or not at all); returns its size."""
    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(dest.parent, 0o700)
    partial = dest.with_name(f".{dest.name}.{os.urandom(4).hex()}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        members = await asyncio.to_thread(
            lambda: [name for name in PACKED if os.path.lexists(sandbox_dir / name)])
        await _run_tar(["--create", "--file=-", *COMMON, "--sparse", "--one-file-system",
                        f"--directory={sandbox_dir}", "--", *members], stdout=fd)
        await asyncio.to_thread(os.fsync, fd)
        size = os.fstat(fd).st_size
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise
    os.close(fd)
    os.rename(partial, dest)
    await asyncio.to_thread(fsync_path, dest.parent, True)
    return size


def drop_unpacked(sandbox_dir: Path) -> None:
    """Remove the packed originals (after the spec says archived) and any stale staging."""
    for name in (*PACKED, STAGING):
        path = sandbox_dir / name
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.exists():
            shutil.rmtree(path)


async def unpack(archive: Path, sandbox_dir: Path) -> None:
    """Put the archived files back in `sandbox_dir` (the archive itself stays)."""
    staging = sandbox_dir / STAGING
    await asyncio.to_thread(shutil.rmtree, staging, True)
    staging.mkdir(mode=0o700)
    # Owners come back exact only as root; otherwise every file is ours anyway.
    owners = ["--same-owner"] if os.geteuid() == 0 else ["--no-same-owner"]
    await _run_tar(["--extract", f"--file={archive}", *COMMON, *owners, "--same-permissions",
                    f"--directory={staging}"])
    for name in PACKED:
        old = sandbox_dir / name
        if old.exists() or old.is_symlink():
            await asyncio.to_thread(shutil.rmtree, old)  # a leftover of an interrupted archive
        if (staging / name).exists():
            os.rename(staging / name, old)
    staging.rmdir()
    await asyncio.to_thread(fsync_path, sandbox_dir, True)


def sweep(archives_dir: Path, sandboxes_dir: Path, not_archived: Iterable[str]) -> list[Path]:
    """Remove partial archives, and archives of sandboxes that are gone or not archived
    (an archive whose sandbox's spec cannot be read stays); returns what was removed."""
    stale = set(not_archived)
    removed: list[Path] = []
    if not archives_dir.is_dir():
        return removed
    for entry in archives_dir.iterdir():
        sandbox_id = entry.name[:-len(SUFFIX)] if entry.name.endswith(SUFFIX) else None
        if entry.name.endswith(".partial") or (sandbox_id is not None and (
                sandbox_id in stale or not (sandboxes_dir / sandbox_id).is_dir())):
            entry.unlink()
            removed.append(entry)
    return removed
