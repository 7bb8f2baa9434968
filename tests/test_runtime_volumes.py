"""Volumes bind-mounted into sandboxes by a real Runtime: shared between sandboxes with
different uids, kept across stop/start, read-only when asked, and safe against a symlink
one sandbox plants in a shared volume to get the host's /etc into another."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.manager import SandboxError
from runtime.ownroot import USER_ID_INSIDE, VOLUME_GROUPS_INSIDE
from runtime.volumes import (
    VOLUME_GID_BASE,
    Mount,
    MountError,
    make_subpath,
    make_volume,
    remove_volume,
    validate_subpath,
    validate_target,
)
from tests.runtime_direct import DirectRuntime
from tests.runtime_helpers import needs_bwrap, own_roots

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="sandboxes have uids of their own only as root")


@pytest.fixture(scope="module")
def direct(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DirectRuntime]:
    running = DirectRuntime(tmp_path_factory.mktemp("volumes") / "state")
    yield running
    running.close()


@pytest.fixture
def volume(direct: DirectRuntime) -> Path:
    path = direct.runtime.root / "volumes" / f"vol-{os.urandom(4).hex()}"
    make_volume(path)
    return path


def sandboxes_on_disk(direct: DirectRuntime) -> set[str]:
    return {p.name for p in direct.runtime.sandboxes_dir.iterdir()}


@needs_bwrap
@as_root
def test_two_sandboxes_share_a_volume_and_can_change_each_others_files(
        direct: DirectRuntime, volume: Path) -> None:
    source = make_subpath(volume, "shared/data")
    a = direct.run(direct.runtime.create(mounts=[Mount(source, "/home/daytona/vol")]))
    b = direct.run(direct.runtime.create(mounts=[Mount(source, "/srv")]))
    assert a.uid != b.uid
    try:
        code, out = direct.sh(a.id, "mkdir /home/daytona/vol/dir && echo from-a > /home/daytona/vol/dir/note && id -G")
        assert code == 0, out
        gid = os.stat(volume).st_gid
        # Inside, the volume's gid is one of the sandbox user's groups: itself (host root),
        # or the group its ID-mapped mount shows it as (own root: ownroot.VOLUME_GROUPS_INSIDE).
        inside = VOLUME_GROUPS_INSIDE if own_roots() else gid
        assert gid >= VOLUME_GID_BASE and str(inside) in out.split(), out
        # B, another uid, reads A's file and changes it (shared gid + umask 002).
        code, out = direct.sh(b.id, "cat /srv/dir/note && echo from-b >> /srv/dir/note && touch /srv/dir/b")
        assert code == 0, out
        assert out.strip() == "from-a"
        assert (source / "dir" / "note").read_text() == "from-a\nfrom-b\n"
        made = (source / "dir" / "b").stat()
        # On the volume's disk: B's uid (host root) or the id inside (own root: every
        # sandbox's user writes as 1000 through its ID-mapped mount).
        assert made.st_uid == (USER_ID_INSIDE if own_roots() else b.uid)
        assert made.st_gid == gid and made.st_mode & 0o020
        # Nobody else on the host gets in: the volumes dir is root's alone.
        assert (volume.parent.stat().st_mode & 0o777) == 0o700
        assert (volume.stat().st_mode & 0o7777) == 0o2770
    finally:
        direct.run(direct.runtime.delete(a.id))
        direct.run(direct.runtime.delete(b.id))


@needs_bwrap
@as_root
@pytest.mark.parametrize("link", ["/etc", "../../sandboxes", "../.."])
def test_a_symlink_planted_in_a_shared_volume_never_reaches_the_host(
        direct: DirectRuntime, volume: Path, link: str) -> None:
    attacker = direct.run(direct.runtime.create(mounts=[Mount(volume, "/home/daytona/vol")]))
    try:
        code, out = direct.sh(attacker.id, f"ln -s {link} /home/daytona/vol/sub && mkdir -p /home/daytona/vol/real"
                                           f" && ln -s {link} /home/daytona/vol/real/deeper")
        assert code == 0, out
        assert (volume / "sub").is_symlink()
        before = sandboxes_on_disk(direct)
        for subpath in ("sub", "sub/x", "real/deeper"):
            # The backend creating the subpath must not follow it (mkdir -p would).
            with pytest.raises(MountError, match="symbolic link"):
                make_subpath(volume, subpath)
            # And a mount of it is refused before anything is created.
            with pytest.raises(SandboxError, match="symbolic link") as caught:
                direct.run(direct.runtime.create(mounts=[Mount(volume / subpath, "/home/daytona/v")]))
            assert caught.value.status == 400
        assert not Path("/etc/x").exists()
        assert sandboxes_on_disk(direct) == before
    finally:
        direct.run(direct.runtime.delete(attacker.id))


@needs_bwrap
@as_root
def test_a_symlink_swapped_in_after_create_is_refused_at_start(direct: DirectRuntime, volume: Path) -> None:
    source = make_subpath(volume, "work")
    victim = direct.run(direct.runtime.create(mounts=[Mount(source, "/home/daytona/work")]))
    attacker = direct.run(direct.runtime.create(mounts=[Mount(volume, "/srv")]))
    try:
        direct.run(direct.runtime.stop(victim.id))
        code, out = direct.sh(attacker.id, "mv /srv/work /srv/old && ln -s /etc /srv/work")
        assert code == 0, out
        with pytest.raises(SandboxError, match="symbolic link"):
            direct.run(direct.runtime.start(victim.id))
        assert victim.id not in direct.runtime.running
    finally:
        direct.run(direct.runtime.delete(victim.id))
        direct.run(direct.runtime.delete(attacker.id))


@needs_bwrap
def test_mounts_survive_stop_and_start_and_read_only_is_read_only(direct: DirectRuntime, volume: Path) -> None:
    data = make_subpath(volume, "data")
    (data / "seed").write_text("seed\n")
    spec = direct.run(direct.runtime.create(mounts=[Mount(data, "/home/daytona/data"),
                                                    Mount(volume, "/tmp/ro", read_only=True)]))
    try:
        assert direct.execute(spec.id, "cat /home/daytona/data/seed") == (0, "seed\n")
        direct.run(direct.runtime.stop(spec.id))
        direct.run(direct.runtime.start(spec.id))
        assert [m.target for m in direct.runtime.get(spec.id).mounts] == ["/home/daytona/data", "/tmp/ro"]
        code, out = direct.sh(spec.id, "cat /tmp/ro/data/seed && echo x > /tmp/ro/data/seed")
        assert code != 0 and "Read-only file system" in out
        assert (data / "seed").read_text() == "seed\n"
        # bwrap got file descriptors, not paths; none of them stays open in the sandbox.
        code, out = direct.sh(spec.id, f"ls -l /proc/[0-9]*/fd/ 2>/dev/null | grep -cF {volume} || true")
        assert out.strip() == "0", out
    finally:
        direct.run(direct.runtime.delete(spec.id))
    assert (data / "seed").exists()  # deleting a sandbox leaves its volumes alone


@pytest.mark.parametrize("target, message", [
    ("relative/path", "absolute"),
    ("/", "must not be /"),
    ("/data//x", "//"),
    ("/data/../etc", r"\.\."),
    ("/data/./x", r"\."),
    ("/etc", "/etc"),
    ("/etc/app", "/etc"),
    ("/proc/x", "/proc"),
    ("/lib64", "/lib64"),
    ("/home", "cover"),
    ("/home/daytona", "cover"),
    ("/tmp", "cover"),
    ("/usr/no-such-dir", "read-only root"),
])
def test_bad_mount_paths_are_a_400_and_create_nothing(direct: DirectRuntime, volume: Path,
                                                      target: str, message: str) -> None:
    if own_roots() and message == "read-only root":
        pytest.skip("an own root is writable: any new mount target can be made "
                    "(test_a_mount_target_new_to_an_own_root_is_made)")
    before = sandboxes_on_disk(direct)
    with pytest.raises(SandboxError, match=message) as caught:
        direct.run(direct.runtime.create(mounts=[Mount(volume, target)]))
    assert caught.value.status == 400
    assert sandboxes_on_disk(direct) == before


@needs_bwrap
def test_a_mount_target_new_to_an_own_root_is_made(direct: DirectRuntime, volume: Path) -> None:
    """Where the host's read-only root could not take a new mount point, an own root can."""
    if not own_roots():
        pytest.skip("sandboxes on the host's root: a 400 (test_bad_mount_paths_are_a_400_and_create_nothing)")
    (volume / "probe").write_text("here\n")
    spec = direct.run(direct.runtime.create(mounts=[Mount(volume, "/usr/no-such-dir")]))
    try:
        assert direct.sh(spec.id, "cat /usr/no-such-dir/probe") == (0, "here\n")
    finally:
        direct.run(direct.runtime.delete(spec.id))


def test_good_mount_paths_and_subpaths() -> None:
    assert validate_target("/home/daytona/vol/") == "/home/daytona/vol"
    assert validate_target("/etcetera") == "/etcetera"
    assert validate_subpath("a/b/") == "a/b"
    for bad in ("/abs", "a/../b", ".."):
        with pytest.raises(MountError):
            validate_subpath(bad)


def test_missing_or_non_directory_sources_are_a_400(direct: DirectRuntime, volume: Path) -> None:
    (volume / "file").write_text("x")
    for source, message in ((volume / "nope", "does not exist"), (volume / "file", "not a directory"),
                            (Path("relative"), "absolute")):
        with pytest.raises(SandboxError, match=message):
            direct.run(direct.runtime.create(mounts=[Mount(source, "/home/daytona/v")]))
    with pytest.raises(SandboxError, match="two mounts"):
        direct.run(direct.runtime.create(mounts=[Mount(volume, "/home/daytona/v"), Mount(volume, "/home/daytona/v/")]))


@needs_bwrap
def test_removing_a_volume_removes_planted_symlinks_not_what_they_point_to(
        direct: DirectRuntime, volume: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    spec = direct.run(direct.runtime.create(mounts=[Mount(volume, "/home/daytona/vol")]))
    try:
        code, out = direct.sh(spec.id, "mkdir -p /home/daytona/vol/a && echo x > /home/daytona/vol/a/f")
        assert code == 0, out
    finally:
        direct.run(direct.runtime.delete(spec.id))
    (volume / "a" / "link").symlink_to(outside)  # as a sandbox would (its view of the path differs)
    (volume / "top").symlink_to(outside)
    remove_volume(volume)
    assert not volume.exists() and (outside / "precious").read_text() == "keep"
    with pytest.raises(MountError):
        remove_volume(volume)


@needs_bwrap
def test_mounts_survive_archive_and_a_runtime_restart_and_the_volume_is_not_archived(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    state = tmp_path_factory.mktemp("restart") / "state"
    first = DirectRuntime(state)
    volume = first.runtime.root / "volumes" / "v1"
    make_volume(volume)
    spec = first.run(first.runtime.create(mounts=[Mount(volume, "/home/daytona/vol")]))
    code, out = first.sh(spec.id, "head -c 5000000 /dev/urandom > vol/big && echo mine > own")
    assert code == 0, out
    first.run(first.runtime.stop(spec.id))
    first.run(first.runtime.archive(spec.id))
    # The volume's data stays where it is and is not packed with the sandbox's files.
    assert (state / "archives" / f"{spec.id}.tar.zst").stat().st_size < 1_000_000
    assert (volume / "big").stat().st_size == 5_000_000
    first.close()

    second = DirectRuntime(state)
    try:
        second.run(second.runtime.start(spec.id))
        assert second.runtime.get(spec.id).mounts == (Mount(volume, "/home/daytona/vol"),)
        assert second.sh(spec.id, "cat own && wc -c < vol/big") == (0, "mine\n5000000\n")
    finally:
        second.run(second.runtime.delete(spec.id))
        second.close()
