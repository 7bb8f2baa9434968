"""Archive and restore with a real Runtime: only from stopped, disk is freed, start brings
every file back exact (owners, modes, symlinks, hard links, empty dirs, big and sparse
files), planted symlinks and hard links do not reach the host, and a SIGKILL mid-archive
loses nothing."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.manager import Runtime, SandboxError
from tests.helpers import REPO_ROOT
from tests.layer_helpers import mounted_upper
from tests.runtime_direct import DirectRuntime
from tests.runtime_helpers import needs_bwrap, own_roots

pytestmark = needs_bwrap

TREE = r"""
set -e
cd /home/daytona
mkdir -p project/src empty/nested && chmod 0750 project && chmod 0711 empty
printf 'print(1)\n' > project/src/main.py && chmod 0640 project/src/main.py
printf '#!/bin/sh\necho hi\n' > project/run.sh && chmod 0755 project/run.sh
ln -s src/main.py project/link && ln -s /nonexistent dangling
ln project/src/main.py hardlink
head -c 3000000 /dev/urandom > big.bin
truncate -s 200M sparse.img && printf 'middle' | dd of=sparse.img bs=1 seek=100000000 conv=notrunc 2>/dev/null
touch -d '2001-02-03 04:05:06.123456789' project/src/main.py
mkfifo fifo
echo tmpfile > /tmp/in-tmp && mkdir /tmp/emptydir
"""


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """What must come back exact, per path, as seen from the host."""
    out: dict[str, tuple[object, ...]] = {}
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath, name)
            st = path.lstat()
            rel = str(path.relative_to(root))
            item: tuple[object, ...] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
            if stat.S_ISLNK(st.st_mode):
                item += (os.readlink(path),)
            elif stat.S_ISREG(st.st_mode):
                item += (st.st_size, st.st_mtime_ns, st.st_blocks < st.st_size // 512 // 2,
                         hashlib.sha256(path.read_bytes()).hexdigest())
                if st.st_nlink > 1:
                    item += ("linked-with", inodes.setdefault(st.st_ino, rel))
            out[rel] = item
    return out


@pytest.fixture(scope="module")
def direct(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DirectRuntime]:
    running = DirectRuntime(tmp_path_factory.mktemp("archive") / "state")
    yield running
    running.close()


@contextlib.contextmanager
def files_of(rt: Runtime, sandbox_id: str, scratch: Path) -> Iterator[tuple[Path, Path | None]]:
    """A stopped sandbox's home and /tmp as the host holds them: its directories (host
    root), or its home in the upper layer on its disk image (own root; /tmp is a tmpfs
    there, gone at stop, as the snapshot design says)."""
    if own_roots():
        with mounted_upper(rt.sandboxes_dir / sandbox_id / "disk.img", scratch) as upper:
            yield upper / "home" / "daytona", None
    else:
        yield rt.sandboxes_dir / sandbox_id / "home", rt.sandboxes_dir / sandbox_id / "tmp"


def view(rt: Runtime, sandbox_id: str, scratch: Path) -> tuple[object, ...]:
    with files_of(rt, sandbox_id, scratch) as (home, tmp):
        return snapshot(home), tmp and snapshot(tmp), stat.S_IMODE(home.stat().st_mode)


def test_archive_frees_disk_and_start_restores_every_file_exact(direct: DirectRuntime, tmp_path: Path) -> None:
    rt = direct.runtime
    spec = direct.run(rt.create())
    try:
        code, out = direct.sh(spec.id, TREE)
        assert code == 0, out
        with pytest.raises(SandboxError, match="stop it before archiving") as caught:
            direct.run(rt.archive(spec.id))
        assert caught.value.status == 409
        direct.run(rt.stop(spec.id))
        before = view(rt, spec.id, tmp_path / "mnt")
        assert before[0]["sparse.img"][6] is True  # type: ignore[index]  # really sparse on disk

        direct.run(rt.archive(spec.id))
        archive = rt.archives_dir / f"{spec.id}.tar.zst"
        left = ("disk.img",) if own_roots() else ("home", "tmp")
        assert not any((rt.sandboxes_dir / spec.id / name).exists() for name in left)
        assert archive.stat().st_size < 4_000_000  # 200 MB sparse file packed as its holes
        assert stat.S_IMODE(archive.stat().st_mode) == 0o600 and archive.stat().st_uid == os.geteuid()
        assert stat.S_IMODE(rt.archives_dir.stat().st_mode) == 0o700
        assert rt.status()[spec.id] == "archived"
        assert rt.get(spec.id).state == "archived"
        direct.run(rt.stop(spec.id))  # a stop does not forget that the files are archived
        assert rt.status()[spec.id] == "archived"
        assert direct.run(rt.archive(spec.id)).state == "archived"  # idempotent

        direct.run(rt.start(spec.id))
        assert not archive.exists()
        assert rt.status()[spec.id] == "started"
        if own_roots():
            code, out = direct.sh(spec.id, "cat project/link && sh project/run.sh && ls -d empty/nested")
            assert code == 0, out
            assert sorted(out.split()) == sorted(["print(1)", "hi", "empty/nested"])
        else:
            code, out = direct.sh(spec.id, "cat project/link /tmp/in-tmp && sh project/run.sh && "
                                           "ls -d empty/nested /tmp/emptydir")
            assert code == 0, out
            assert sorted(out.split()) == sorted(["print(1)", "tmpfile", "hi", "empty/nested", "/tmp/emptydir"])
        direct.run(rt.stop(spec.id))
        assert view(rt, spec.id, tmp_path / "mnt") == before
    finally:
        direct.run(rt.delete(spec.id))


def test_planted_symlinks_and_a_hard_link_to_a_host_file_do_not_reach_the_host(
        direct: DirectRuntime, tmp_path: Path) -> None:
    rt = direct.runtime
    secret = tmp_path / "host-secret"
    secret.write_text("root only\n")
    os.chmod(secret, 0o600)
    etc_before = {p.name: p.lstat().st_mtime_ns for p in Path("/etc").iterdir()}
    spec = direct.run(rt.create())
    try:
        code, out = direct.sh(spec.id, "ln -s /etc etc && ln -s /etc/passwd passwd && ln -s ../../.. up"
                                       " && ln -s /etc /tmp/etc && mkdir dir && ln -s /etc dir/x")
        assert code == 0, out
        direct.run(rt.stop(spec.id))
        home = rt.sandboxes_dir / spec.id / "home"
        if not own_roots():
            # A hard link to a host file (the sandbox cannot make one: its binds are separate
            # mounts and protected_hardlinks is on), as if the host had left one there. (An
            # own root's files are on its disk image: no host file can be linked in.)
            os.link(secret, home / "stolen")
        direct.run(rt.archive(spec.id))
        direct.run(rt.start(spec.id))
        links = "etc passwd up dir/x" + ("" if own_roots() else " /tmp/etc")  # an own root's /tmp is a tmpfs
        code, out = direct.sh(spec.id, f"readlink {links}; cat stolen")
        assert out.split("\n")[:len(links.split())] == ["/etc", "/etc/passwd", "../../..", "/etc", "/etc"][:len(links.split())]
        if os.geteuid() == 0:
            assert ("No such file" if own_roots() else "Permission denied") in out and "root only" not in out
        # The restored copy is a file of its own: the host's file is not linked any more.
        assert secret.stat().st_nlink == 1 and secret.read_text() == "root only\n"
        if not own_roots():
            assert (home / "stolen").stat().st_ino != secret.stat().st_ino
        assert {p.name: p.lstat().st_mtime_ns for p in Path("/etc").iterdir()} == etc_before
        direct.run(rt.stop(spec.id))
        with files_of(rt, spec.id, tmp_path / "mnt") as (home, _tmp):
            assert (home / "etc").is_symlink() and (home / "dir" / "x").is_symlink()
    finally:
        direct.run(rt.delete(spec.id))
    assert not (rt.archives_dir / f"{spec.id}.tar.zst").exists()


KILLER = r"""
import asyncio, sys
from pathlib import Path
from runtime.manager import Runtime

async def main() -> None:
    rt = Runtime(Path(sys.argv[1]), pool_size=0, idle_timeout=0)
    await rt.open()
    print("archiving", flush=True)
    await rt.archive(sys.argv[2])
    print("archived", flush=True)

asyncio.run(main())
"""


def test_a_sigkill_mid_archive_loses_nothing_and_the_partial_is_swept(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    state = tmp_path_factory.mktemp("killed") / "state"  # short: the socket path has a limit
    first = DirectRuntime(state)
    spec = first.run(first.runtime.create())
    code, out = first.sh(spec.id, "head -c 150000000 /dev/urandom > data.bin && sha256sum data.bin", timeout=120)
    assert code == 0, out
    digest = out.split()[0]
    first.close()  # stops the sandbox, as a runtime restart would

    archives = state / "archives"
    process = subprocess.Popen([sys.executable, "-c", KILLER, str(state), spec.id], cwd=REPO_ROOT,
                               stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not any(p.name.endswith(".partial") and p.stat().st_size > 1_000_000 for p in archives.iterdir()):
            assert process.poll() is None, "the archive finished before it could be interrupted"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.killpg(process.pid, signal.SIGKILL)  # the runtime and its tar, mid-way
    finally:
        process.wait()
    assert [p for p in archives.iterdir() if p.name.endswith(".partial")]

    second = DirectRuntime(state)
    try:
        assert list(archives.iterdir()) == []  # the partial is swept
        assert second.runtime.status() == {spec.id: "stopped"}
        second.run(second.runtime.start(spec.id))
        code, out = second.execute(spec.id, "sha256sum data.bin", timeout=120)
        assert out.split()[0] == digest
    finally:
        second.run(second.runtime.delete(spec.id))
        second.close()


def test_an_interrupted_removal_is_finished_and_restore_uses_the_archive(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    state = tmp_path_factory.mktemp("removal") / "state"
    first = DirectRuntime(state)
    spec = first.run(first.runtime.create())
    assert first.sh(spec.id, "echo kept > kept")[0] == 0
    first.run(first.runtime.stop(spec.id))
    first.run(first.runtime.archive(spec.id))
    first.close()
    # As if the runtime died while removing the originals: some are still there.
    home = state / "sandboxes" / spec.id / "home"
    home.mkdir()
    (home / "half-removed").write_text("x")
    (state / "sandboxes" / spec.id / ".restore").mkdir()  # and a stale restore
    (state / "sandboxes" / "deadbeef0000").mkdir()  # and a create that never finished

    second = DirectRuntime(state)
    try:
        assert second.runtime.status() == {spec.id: "archived"}
        assert not home.exists() and not (state / "sandboxes" / "deadbeef0000").exists()
        second.run(second.runtime.start(spec.id))
        assert second.execute(spec.id, "ls") == (0, "kept\n")
    finally:
        second.run(second.runtime.delete(spec.id))
        second.close()


def test_status_lists_every_sandbox_with_its_state(direct: DirectRuntime) -> None:
    rt = direct.runtime
    started = direct.run(rt.create())
    stopped = direct.run(rt.create())
    archived = direct.run(rt.create())
    try:
        direct.run(rt.stop(stopped.id))
        direct.run(rt.stop(archived.id))
        direct.run(rt.archive(archived.id))
        # Another sandbox cannot see the archive (the state root is an empty tmpfs inside).
        code, out = direct.sh(started.id, f"ls {rt.archives_dir}; ls {rt.archives_dir}/{archived.id}.tar.zst")
        assert code != 0 and "No such file" in out
        assert (rt.archives_dir / f"{archived.id}.tar.zst").exists()
        status = rt.status()
        assert {k: status[k] for k in (started.id, stopped.id, archived.id)} == {
            started.id: "started", stopped.id: "stopped", archived.id: "archived"}
        with pytest.raises(SandboxError) as caught:
            direct.run(rt.archive("nope"))
        assert caught.value.status == 404
    finally:
        for s in (started, stopped, archived):
            direct.run(rt.delete(s.id))
    assert not any(k in rt.status() for k in (started.id, stopped.id, archived.id))
