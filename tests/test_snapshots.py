"""The snapshot store (runtime/snapshots.py): records, layers, the tree hash, collection."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runtime.snapshots import Snapshot, SnapshotError, SnapshotStore, tree_digest
from tests.helpers import REPO_ROOT


@pytest.fixture(autouse=True)
def _own_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests' stores keep their layers in their own state dirs, not the machine's
    shared test layers (tests/conftest.py sets RUNTIME_LAYERS_DIR for the main jobs)."""
    monkeypatch.delenv("RUNTIME_LAYERS_DIR", raising=False)


def _layer(store: SnapshotStore, files: dict[str, str]) -> str:
    tree = store.new_tree()
    for rel, text in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(text)
    for path in tree.rglob("*"):  # the same tree twice is the same layer (mtimes count)
        os.utime(path, (0, 0), follow_symlinks=False)
    return store.publish_layer(tree)


def test_put_get_list_delete(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "state")
    digest = _layer(store, {"etc/os-release": "ID=test\n"})
    snap = store.snapshot_of("daytonaio/sandbox:0.4.3", (digest,), env={"A": "1"}, cmd=("sleep", "1"))
    store.put(snap)
    assert store.get("daytonaio/sandbox:0.4.3") == snap
    assert snap.size == len("ID=test\n")
    assert [s.name for s in store.list()] == ["daytonaio/sandbox:0.4.3"]
    files = list(store.snapshots_dir.iterdir())
    assert len(files) == 1 and "/" not in files[0].name
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(store.snapshots_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(store.layers_dir.stat().st_mode) == 0o700
    # A second store on the same state dir reads the same record.
    assert SnapshotStore(tmp_path / "state").get("daytonaio/sandbox:0.4.3").layers == (digest,)
    store.delete("daytonaio/sandbox:0.4.3")
    assert store.list() == []
    with pytest.raises(KeyError):
        store.get("daytonaio/sandbox:0.4.3")
    with pytest.raises(KeyError):
        store.delete("daytonaio/sandbox:0.4.3")
    # The layer stays until collected.
    assert store.has_layer(digest)


def test_bad_names_and_unknown_layers_are_refused(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "state")
    for name in ("", " x", "a\nb", "x" * 201):
        with pytest.raises(KeyError):
            store.get(name)
        with pytest.raises(ValueError):
            store.put(Snapshot(name=name, layers=()))
    with pytest.raises(ValueError, match="names layer"):
        store.put(Snapshot(name="x", layers=("0" * 64,)))
    for digest in ("../etc", "0" * 63, "G" * 64):
        with pytest.raises(KeyError):
            store.layer_path(digest)


def test_publish_is_by_content_and_deduplicated(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "state")
    first = _layer(store, {"a": "1", "d/b": "2"})
    assert store.layer_path(first).is_dir() and (store.layer_path(first) / "d" / "b").read_text() == "2"
    assert tree_digest(store.layer_path(first))[0] == first
    again = _layer(store, {"a": "1", "d/b": "2"})
    assert again == first
    assert not list(store.layers_dir.glob(".tmp-*"))
    second = _layer(store, {"a": "1", "d/b": "3"})
    assert second != first
    assert store.lower_dirs((first, second)) == [store.layer_path(second), store.layer_path(first)]
    with pytest.raises(KeyError):
        store.lower_dirs((first, "0" * 64))
    with pytest.raises(ValueError, match="new_tree"):
        store.publish_layer(tmp_path)


def test_tree_digest_sees_every_kind_of_change(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    (tree / "d").mkdir(parents=True)
    (tree / "d" / "f").write_text("x")
    os.symlink("d/f", tree / "link")
    os.mkfifo(tree / "fifo")
    base = tree_digest(tree)[0]

    def changed() -> bool:
        return tree_digest(tree)[0] != base

    (tree / "d" / "f").write_text("y")
    assert changed()
    (tree / "d" / "f").write_text("x")
    os.utime(tree / "d" / "f", (0, 0))
    assert changed(), "an mtime change is a modification"
    fresh = tmp_path / "u"
    subprocess.run(["cp", "-a", str(tree), str(fresh)], check=True)
    base = tree_digest(fresh)[0]
    tree = fresh
    os.chmod(tree / "d" / "f", 0o600)
    assert changed()
    os.chmod(tree / "d" / "f", 0o644)
    subprocess.run(["cp", "-a", str(tree), str(tmp_path / "v")], check=True)
    tree = tmp_path / "v"
    base = tree_digest(tree)[0]
    os.unlink(tree / "link")
    os.symlink("d/g", tree / "link")
    assert changed()
    if os.geteuid() == 0:
        subprocess.run(["cp", "-a", str(tree), str(tmp_path / "w")], check=True)
        tree = tmp_path / "w"
        base = tree_digest(tree)[0]
        os.lchown(tree / "d" / "f", 1000, 1000)
        assert changed()
        base = tree_digest(tree)[0]
        os.setxattr(tree / "d", "trusted.overlay.opaque", b"y")
        assert changed()
        base = tree_digest(tree)[0]
        os.mknod(tree / "whiteout", stat.S_IFCHR | 0o000, os.makedev(0, 0))
        assert changed()


def test_collect_keeps_what_is_used(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "state")
    named = _layer(store, {"a": "named"})
    used = _layer(store, {"a": "used by a sandbox"})
    cached = _layer(store, {"a": "a cached build"})
    loose = _layer(store, {"a": "nobody"})
    weak = _layer(store, {"a": "an image build's step"})
    old = _layer(store, {"a": "a step recorded before records were weak"})
    store.put(store.snapshot_of("s", (named,)))
    store.record_build("test-key", (cached,))
    store.record_build("step-key", (named, weak), weak=True)
    (store.layers_dir / ".builds" / "step-old.json").write_text(json.dumps({"layers": [old]}))
    assert store.cached_build("step-key") == (named, weak)
    assert store.collect(lambda: {used}) == sorted([loose, weak, old])
    assert {d for d in (named, used, cached, loose, weak, old) if store.has_layer(d)} == {named, used, cached}
    assert store.layer_size(loose) == 0
    assert not (store.layers_dir / ".builds" / "step-key.json").exists()  # its record went with its layer
    assert store.cached_build("test-key") == (cached,)
    assert not list(store.layers_dir.glob(".tmp-*"))


def test_a_hold_keeps_what_a_build_found_or_made_until_it_ends(tmp_path: Path) -> None:
    """A build in progress (or a sandbox being created) holds the layers it took from the
    cache, published, or `hold`s, though no record names them yet; a collect then keeps
    them, and frees them once the hold is closed. A layer already gone cannot be held."""
    import contextvars

    store = SnapshotStore(tmp_path / "state")
    found = _layer(store, {"a": "from the cache"})
    store.record_build("step-found", (found,), weak=True)
    taken = _layer(store, {"a": "a snapshot's, being deleted"})
    with store.holding() as hold:
        assert store.cached_build("step-found") == (found,)
        made = _layer(store, {"a": "published by the build"})
        assert store.hold((taken,))
        assert hold == {found, made, taken}
        # A collect from elsewhere (another request's context: a sandbox deleted meanwhile).
        assert contextvars.Context().run(store.collect, set()) == []
        assert all(store.has_layer(d) for d in (found, made, taken))
    assert store.collect(set()) == sorted([found, made, taken])
    with store.holding() as hold:
        assert not store.hold((taken,)) and not hold


def test_collect_on_a_shared_layers_dir_removes_nothing_unless_told(tmp_path: Path) -> None:
    """Another state dir's snapshot (invisible to this store) keeps its layer."""
    shared = tmp_path / "shared"
    theirs = SnapshotStore(tmp_path / "theirs", layers_dir=shared)
    digest = _layer(theirs, {"a": "theirs"})
    theirs.put(theirs.snapshot_of("their-image", (digest,)))
    mine = SnapshotStore(tmp_path / "mine", layers_dir=shared)
    assert mine.shared and not SnapshotStore(tmp_path / "own").shared
    mine.collect(set())
    assert mine.has_layer(digest)
    mine.collect(set(), everything=True)
    assert not mine.has_layer(digest)


def test_crashed_partial_trees_are_cleaned(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "state")
    mine = store.new_tree()
    crashed = store.layers_dir / ".tmp-999999999-dead"
    (crashed / "usr").mkdir(parents=True)
    store.clean_partial()
    assert mine.is_dir(), "a live process's tree is kept"
    assert not crashed.exists()


def test_shared_layers_dir_must_be_ours(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o755)
    link = tmp_path / "layers"
    link.symlink_to(target)
    with pytest.raises(SnapshotError, match="not a directory"):
        SnapshotStore(tmp_path / "state", layers_dir=link)
    assert stat.S_IMODE(target.stat().st_mode) == 0o755, "chmod never followed the symlink"
    if os.geteuid() == 0:
        foreign = tmp_path / "foreign"
        foreign.mkdir()
        os.chown(foreign, 1234, 1234)
        with pytest.raises(SnapshotError, match="not a directory"):
            SnapshotStore(tmp_path / "state", layers_dir=foreign)


def test_shared_layers_dir_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNTIME_LAYERS_DIR", str(tmp_path / "shared"))
    one, two = SnapshotStore(tmp_path / "a"), SnapshotStore(tmp_path / "b")
    assert one.layers_dir == two.layers_dir == tmp_path / "shared"
    digest = _layer(one, {"x": "1"})
    assert two.has_layer(digest)
    one.record_build("k", (digest,))
    assert two.cached_build("k") == (digest,)


def test_build_lock_serialises_processes(tmp_path: Path) -> None:
    """Two processes that both want a build: the second waits for the first's lock and
    then finds its cached result (so nothing is built twice)."""
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from runtime.snapshots import SnapshotStore
        store = SnapshotStore(Path(sys.argv[1]), layers_dir=Path({str(tmp_path / 'layers')!r}))
        with store.build_lock("k"):
            if store.cached_build("k") is None:
                print("built", flush=True)
                time.sleep(0.5)
                tree = store.new_tree()
                (tree / "f").write_text("x")
                store.record_build("k", (store.publish_layer(tree),))
            else:
                print("cached", flush=True)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / f"s{i}")], cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, text=True) for i in range(3)]
    outputs = sorted(p.communicate(timeout=30)[0].strip() for p in procs)
    assert outputs == ["built", "cached", "cached"]


# ---- the default snapshot (built once per machine: tests/layer_helpers.py) ----------------

def test_default_snapshot_is_a_debian_root_with_the_daytona_user(tmp_path: Path) -> None:
    """The `base` stage of images/sandbox/Dockerfile on the debian:bookworm-slim made here."""
    from runtime.rootfs import BASE_IMAGE, ensure_base
    from tests.layer_helpers import default_snapshot, overlay

    store, snapshot = default_snapshot()
    base = ensure_base(store, lambda line: None)
    assert snapshot.name == "default" and snapshot.layers[0] == base.layers[0] and len(snapshot.layers) == 3
    assert snapshot.user == "daytona" and snapshot.workdir == "/home/daytona"
    assert snapshot.env["HOME"] == "/home/daytona" and snapshot.env["LANG"] == "C.UTF-8"
    assert "DEBIAN_FRONTEND" not in snapshot.env  # an ARG of the build, not the sandbox's
    assert snapshot.size > 100_000_000
    slim = store.layer_path(base.layers[0])
    assert not (slim / "usr/bin/python3").exists() and (slim / "etc/dpkg/dpkg.cfg.d/docker").is_file(), BASE_IMAGE
    with overlay(store.lower_dirs(snapshot.layers), tmp_path / "view") as root:
        sudoers = root / "etc" / "sudoers.d" / "daytona"
        assert sudoers.read_text() == "daytona ALL=(ALL) NOPASSWD:ALL\n"
        assert stat.S_IMODE(sudoers.stat().st_mode) == 0o440 and sudoers.stat().st_uid == 0
        home = (root / "home" / "daytona").stat()
        assert (home.st_uid, home.st_gid) == (1000, 1000)
        assert not list((root / "var" / "lib" / "apt" / "lists").glob("*")), "apt lists are cleaned"
        assert not list((root / "var" / "cache" / "apt" / "archives").glob("*.deb"))
        assert (root / "etc" / "resolv.conf").read_text() == "", "the host's resolver is not baked in"
        assert not list((root / "usr/share/man").iterdir()), "slim: no man pages"
        script = ("id daytona; getent passwd daytona | cut -d: -f6,7; cat /etc/hostname; "
                  "python -c 'import venv, ensurepip; print(1)'; git --version; node --version; "
                  "for c in npm curl sudo pip3 gcc make jq ps; do command -v $c; done")
        out = subprocess.run(["bwrap", "--ro-bind", str(root), "/", "--proc", "/proc", "--dev", "/dev",
                              "--tmpfs", "/tmp", "--unshare-all", "--", "/bin/sh", "-c", script],
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "uid=1000(daytona) gid=1000(daytona) groups=1000(daytona)"
    assert lines[1] == "/home/daytona:/bin/bash"
    assert lines[2] == "sandbox"
    assert lines[3] == "1"
    assert lines[4].startswith("git version 2.")
    assert lines[5].startswith("v18.")
    assert lines[6:] == ["/usr/bin/npm", "/usr/bin/curl", "/usr/bin/sudo", "/usr/bin/pip3", "/usr/bin/gcc",
                         "/usr/bin/make", "/usr/bin/jq", "/usr/bin/ps"]


def test_default_snapshot_is_found_not_rebuilt_from_another_state_dir(tmp_path: Path) -> None:
    """A second store on the same layers dir (another state dir, another test stack) gets
    the cached build: no build step runs, the same layer, its own 0600 record."""
    from tests.layer_helpers import default_snapshot

    shared, built = default_snapshot()
    store = SnapshotStore(tmp_path / "state", layers_dir=shared.layers_dir)
    said: list[str] = []
    again = store.ensure_default(said.append)
    assert said == [], "nothing was built"
    assert again.layers == built.layers
    assert stat.S_IMODE((store.snapshots_dir / "default.json").stat().st_mode) == 0o600
    assert store.ensure_default(said.append) == again and said == []


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts /proc as root")
def test_a_crashed_build_with_proc_mounted_is_removed_without_touching_proc(tmp_path: Path) -> None:
    """debootstrap mounts /proc in its tree; a build killed there leaves a mount behind
    (outside the private mount namespace the runtime uses, as here). The next build's
    cleanup unmounts before it deletes, and never reaches into the real /proc."""
    store = SnapshotStore(tmp_path / "state")
    crashed = store.layers_dir / ".tmp-999999999-crashed"
    (crashed / "proc").mkdir(parents=True)
    (crashed / "etc").mkdir()
    subprocess.run(["mount", "-t", "proc", "proc", str(crashed / "proc")], check=True)
    try:
        assert (crashed / "proc" / "self").exists()
        store.clean_partial()
    finally:
        subprocess.run(["umount", "--lazy", str(crashed / "proc")], capture_output=True)
    assert not crashed.exists()
    assert Path("/proc/self/status").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="overlay mounts and chroot as root")
def test_a_snapshot_layered_on_the_default_adds_one_layer_and_leaves_the_base_alone(tmp_path: Path) -> None:
    from runtime.rootfs import ensure_layered
    from tests.layer_helpers import default_snapshot, layer_checksum, overlay

    shared, base = default_snapshot()
    store = SnapshotStore(tmp_path / "state", layers_dir=tmp_path / "layers")
    # Its own layers dir (so the test's layers are its own): the base's layers are linked in.
    for digest in base.layers:
        os.symlink(shared.layer_path(digest), store.layers_dir / digest)
    base_layer = shared.layer_path(base.layers[-1])
    before = layer_checksum(base_layer)
    script = ("echo 'step: changing the root'; echo hello > /usr/local/hello; rm /etc/hostname; "
              "rm -r /etc/apt/sources.list.d; mkdir /etc/apt/sources.list.d; "
              "getent hosts localhost >/dev/null; id daytona")
    said: list[str] = []
    snap = ensure_layered(store, "with-hello", base, script, said.append)
    assert snap.layers[:-1] == base.layers and len(snap.layers) == len(base.layers) + 1
    assert any("step: changing the root" in line for line in said), said
    top = store.layer_path(snap.layers[-1])
    assert (top / "usr" / "local" / "hello").read_text() == "hello\n"
    whiteout = os.lstat(top / "etc" / "hostname")
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0, "a deletion is a whiteout"
    assert os.getxattr(top / "etc" / "apt" / "sources.list.d", "trusted.overlay.opaque") == b"y"
    assert not (top / "etc" / "resolv.conf").exists(), "the build's resolver is not in the layer"
    assert not (top / "proc").exists() or not list((top / "proc").iterdir())
    assert layer_checksum(base_layer) == before, "the base layer was written"
    assert not list(store.layers_dir.glob(".tmp-*"))
    with overlay(store.lower_dirs(snap.layers), tmp_path / "view") as merged:
        assert (merged / "usr" / "local" / "hello").exists()
        assert not (merged / "etc" / "hostname").exists()
        assert (merged / "etc" / "passwd").exists()
    # Cached: the same script on the same base builds nothing.
    said.clear()
    assert ensure_layered(store, "with-hello", base, script, said.append).layers == snap.layers
    assert said == []
