"""Sandboxes with their own root (RUNTIME_ROOTFS=snapshot, runtime/rootlauncher.py), driven
through a real Runtime: an overlay of the snapshot's ID-mapped layers over the sandbox's own
ext4 disk image, root inside its own user namespace with a working sudo, the disk quota,
and what must never reach the host."""

from __future__ import annotations

import base64
import os
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from runtime import ownroot
from runtime.codemount import REPO_ROOT
from runtime.sandbox import SandboxSpec
from runtime.volumes import Mount, make_volume
from tests.layer_helpers import layer_checksum, shared_default
from tests.runtime_direct import DirectRuntime

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="sandboxes with their own root need root")


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DirectRuntime]:
    state = tmp_path_factory.mktemp("rootfs-state")
    runtime = DirectRuntime(state, rootfs_mode="snapshot", snapshots=shared_default()[0], disk_gib=1)
    try:
        yield runtime
    finally:
        runtime.close()


def layer_paths(rt: DirectRuntime, spec: SandboxSpec) -> list[Path]:
    assert rt.runtime.snapshots is not None
    return [rt.runtime.snapshots.layer_path(d) for d in spec.layers]


def tiny_deb(tmp: Path) -> bytes:
    """A .deb installing /usr/local/bin/hello-i15core (built here: no network needed)."""
    pkg = tmp / "hello"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "usr" / "local" / "bin").mkdir(parents=True)
    (pkg / "DEBIAN" / "control").write_text(
        "Package: hello-i15core\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.com>\n"
        "Description: test package\n")
    script = pkg / "usr" / "local" / "bin" / "hello-i15core"
    script.write_text("#!/bin/sh\necho hello from a package\n")
    script.chmod(0o755)
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(pkg), str(tmp / "hello.deb")],
                   check=True, capture_output=True)
    return (tmp / "hello.deb").read_bytes()


def loop_backing_files() -> list[str]:
    found = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            found.append(backing.read_text().strip())
        except OSError:
            continue
    return found


def processes_in_range(base: int) -> list[int]:
    pids = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            uids = next(line for line in status.read_text().splitlines() if line.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        if any(base <= int(u) < base + ownroot.IDS_PER_SANDBOX for u in uids.split()[1:]):
            pids.append(int(status.parent.name))
    return pids


def peer_uid(path: Path) -> int:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(path))
        _pid, uid, _gid = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        return uid


def test_sudo_apt_install_and_useradd_stay_in_the_sandbox(rt: DirectRuntime, tmp_path: Path) -> None:
    deb = base64.b64encode(tiny_deb(tmp_path)).decode()
    a = rt.run(rt.runtime.create())
    b = rt.run(rt.runtime.create())
    layers = layer_paths(rt, a)
    before = [layer_checksum(p) for p in layers]
    try:
        code, out = rt.sh(a.id, "id -un; id -u; sudo -n id -u; grep NoNewPrivs /proc/self/status")
        assert code == 0 and out.split() == ["daytona", "1000", "0", "NoNewPrivs:", "0"], out
        code, out = rt.sh(a.id, f"echo {deb} | base64 -d > /tmp/hello.deb && "
                                "sudo -n apt-get install -y /tmp/hello.deb && hello-i15core && "
                                "dpkg -s hello-i15core | grep Status", timeout=120)
        assert code == 0 and "hello from a package" in out and "install ok installed" in out, out
        code, out = rt.sh(a.id, "sudo -n useradd -m alice && id -u alice && ls -ld /home/alice && "
                                "echo x | sudo -n tee /usr/local/from-sudo >/dev/null && stat -c %U /usr/local/from-sudo")
        assert code == 0 and "alice" in out and out.split()[-1] == "root", out
        # The other sandbox of the same snapshot has none of it.
        code, out = rt.sh(b.id, "command -v hello-i15core; id alice; ls /usr/local/from-sudo")
        assert code != 0 and "hello-i15core" not in out and "no such user" in out, out
        # Root inside is root of its own namespace only: the host's ids it has are its range.
        code, out = rt.sh(a.id, "cat /proc/self/uid_map")
        assert out.split() == ["0", str(a.id_base), str(ownroot.IDS_PER_SANDBOX)], out
        # The syscall filter holds for root inside too: no mounts, no new namespaces.
        code, out = rt.sh(a.id, "grep ^Seccomp: /proc/self/status; sudo -n mount -t tmpfs none /mnt 2>&1; "
                                "sudo -n unshare -U true 2>&1; echo done")
        assert out.startswith("Seccomp:\t2\n") and "mount: /mnt: permission denied" in out, out
        assert "unshare failed: Operation not permitted" in out and out.endswith("done\n"), out
    finally:
        rt.run(rt.runtime.delete(b.id))
    rt.run(rt.runtime.stop(a.id))
    # Nothing on the host outside the sandbox's disk: not on the host's root, not in the
    # shared layer (byte for byte), but in the image's upper layer.
    assert not Path("/usr/local/bin/hello-i15core").exists()
    assert [layer_checksum(p) for p in layers] == before
    for layer in layers:
        assert not (layer / "usr/local/bin/hello-i15core").exists()
    image = rt.runtime.sandboxes_dir / a.id / ownroot.DISK_IMAGE
    listing = subprocess.run(["debugfs", "-R", "ls -l /upper/usr/local/bin", str(image)],
                             capture_output=True, text=True, check=True).stdout
    assert "hello-i15core" in listing
    rt.run(rt.runtime.delete(a.id))


def test_etc_passwd_is_the_snapshots_and_no_host_path_is_visible(rt: DirectRuntime) -> None:
    spec = rt.run(rt.runtime.create())
    try:
        code, passwd = rt.execute(spec.id, "cat /etc/passwd")
        top_passwd = next(p / "etc/passwd" for p in reversed(layer_paths(rt, spec)) if (p / "etc/passwd").exists())
        assert code == 0 and passwd == top_passwd.read_text()
        code, info = rt.execute(spec.id, "cat /proc/self/mountinfo")
        assert code == 0
        host_paths = [str(rt.runtime.root), str(REPO_ROOT), *(str(p) for p in layer_paths(rt, spec))]
        for line in info.splitlines():
            fields = line.split()
            # mount point and options (the overlay's lowerdir/upperdir): nothing of the host
            visible = " ".join([fields[4], *fields[fields.index("-") + 1:]])
            for host in host_paths:
                assert host not in visible, line
        checks = " ; ".join(f"test -e {p} && echo LEAK {p}" for p in
                            [rt.runtime.root, REPO_ROOT, rt.runtime.sandboxes_dir, "/work", "/var/tmp/i15core"])
        code, out = rt.sh(spec.id, checks + " ; true")
        assert "LEAK" not in out, out
    finally:
        rt.run(rt.runtime.delete(spec.id))


def test_disk_quota_is_enospc_inside_and_507_through_the_toolbox(rt: DirectRuntime) -> None:
    small = rt.run(rt.runtime.create(disk_gib=1))
    other = rt.run(rt.runtime.create())
    image = rt.runtime.sandboxes_dir / small.id / ownroot.DISK_IMAGE
    try:
        code, out = rt.sh(small.id, "dd if=/dev/zero of=/home/daytona/big bs=1M count=1400 2>&1",
                          timeout=120)
        assert code != 0 and "No space left on device" in out, out
        # The host's disk took at most the quota; other sandboxes still write.
        assert ownroot.disk_usage(image) <= 1.05 * ownroot.GIB
        assert 0.9 * ownroot.GIB < int(str(rt.runtime.describe(small)["disk_used_bytes"])) <= 1.05 * ownroot.GIB
        code, out = rt.sh(other.id, "dd if=/dev/zero of=/home/daytona/ok bs=1M count=20 2>&1 && echo fine")
        assert code == 0 and "fine" in out, out
        transport = httpx.HTTPTransport(uds=str(rt.socket(small.id)))
        with httpx.Client(transport=transport, base_url="http://sandbox", timeout=60) as client:
            response = client.post("/files/upload-v2", params={"path": "/home/daytona/up.bin"},
                                   content=os.urandom(4 * 2**20))
        assert response.status_code == 507, response.text
        # Deleting frees the space again (discard punches holes in the image).
        code, out = rt.sh(small.id, "rm /home/daytona/big && sync && dd if=/dev/zero of=/home/daytona/x bs=1M "
                                    "count=10 2>&1 && echo fine")
        assert code == 0 and "fine" in out, out
    finally:
        rt.run(rt.runtime.delete(small.id))
        rt.run(rt.runtime.delete(other.id))


def test_survives_stop_start_and_archive_and_delete_leaves_nothing(rt: DirectRuntime) -> None:
    spec = rt.run(rt.runtime.create())
    assert spec.id_base is not None
    directory = rt.runtime.sandboxes_dir / spec.id
    code, out = rt.sh(spec.id, "echo kept | sudo -n tee /usr/local/kept >/dev/null && echo home > ~/note")
    assert code == 0, out
    assert peer_uid(rt.socket(spec.id)) == spec.uid == spec.id_base + ownroot.USER_ID_INSIDE
    rt.run(rt.runtime.stop(spec.id))
    rt.run(rt.runtime.start(spec.id))
    assert rt.sh(spec.id, "cat /usr/local/kept ~/note") == (0, "kept\nhome\n")
    rt.run(rt.runtime.stop(spec.id))
    rt.run(rt.runtime.archive(spec.id))
    assert not (directory / ownroot.DISK_IMAGE).exists()
    rt.run(rt.runtime.start(spec.id))
    assert rt.sh(spec.id, "cat /usr/local/kept ~/note; stat -c %U /usr/local/kept") == (0, "kept\nhome\nroot\n")
    rt.run(rt.runtime.delete(spec.id))
    assert not directory.exists()
    assert not [b for b in loop_backing_files() if str(rt.runtime.root) in b]
    assert str(rt.runtime.root) + "/" not in Path("/proc/self/mountinfo").read_text()
    # Killed processes may still be zombies for a moment, until the host's init reaps them.
    deadline = time.monotonic() + 5
    while processes_in_range(spec.id_base) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_in_range(spec.id_base) == []


def test_ranges_are_disjoint_and_the_pool_hands_out_rooted_sandboxes(tmp_path: Path) -> None:
    runtime = DirectRuntime(tmp_path / "state", rootfs_mode="snapshot", snapshots=shared_default()[0],
                            pool_size=1, disk_gib=1)
    try:
        runtime.run(runtime.runtime.wait_pool_ready())
        a = runtime.run(runtime.runtime.create())
        b = runtime.run(runtime.runtime.create(disk_gib=2))  # not the pool's disk: started cold
        assert a.id_base is not None and b.id_base is not None
        assert abs(a.id_base - b.id_base) >= ownroot.IDS_PER_SANDBOX
        assert a.disk_gib == 1 and b.disk_gib == 2
        assert runtime.sh(a.id, "df -B1 --output=size / | tail -1")[1].strip() != \
            runtime.sh(b.id, "df -B1 --output=size / | tail -1")[1].strip()
        for spec in (a, b):
            assert peer_uid(runtime.socket(spec.id)) == spec.uid
        code, out = runtime.sh(a.id, "hostname; cat /etc/hostname; getent hosts sandbox")
        assert code == 0 and out.split()[:2] == ["sandbox", "sandbox"], out
    finally:
        runtime.close()


def test_volumes_are_shared_between_sandboxes_with_their_own_ids(rt: DirectRuntime, tmp_path: Path) -> None:
    volume = tmp_path / "vol"
    make_volume(volume)
    a = rt.run(rt.runtime.create(mounts=[Mount(volume, "/srv/data")]))
    b = rt.run(rt.runtime.create(mounts=[Mount(volume, "/home/daytona/data"), Mount(volume, "/ro", read_only=True)]))
    try:
        code, out = rt.sh(a.id, "echo from-a > /srv/data/f && mkdir /srv/data/d && stat -c '%U %a' /srv/data/f")
        assert code == 0 and out.split() == ["daytona", "664"], out
        code, out = rt.sh(b.id, "cat ~/data/f && echo from-b >> ~/data/f && touch ~/data/d/x && "
                                "echo no > /ro/g; cat /ro/f")
        assert "from-a" in out and "Read-only file system" in out and out.endswith("from-a\nfrom-b\n"), out
        # On the host, the files carry the ids inside (daytona = 1000) and the volume's gid.
        st = (volume / "f").stat()
        assert (st.st_uid, st.st_gid) == (ownroot.USER_ID_INSIDE, volume.stat().st_gid)
        code, out = rt.sh(a.id, "sudo -n touch /srv/data/by-root && stat -c %u /srv/data/by-root")
        assert code == 0 and out.strip() == "0" and (volume / "by-root").stat().st_uid == 0
    finally:
        rt.run(rt.runtime.delete(a.id))
        rt.run(rt.runtime.delete(b.id))


def test_resize_grows_the_disk_at_the_next_start_and_never_shrinks_it(rt: DirectRuntime) -> None:
    """Growing a mounted ext4 needs CAP_SYS_RESOURCE, which this CI container drops: a
    started sandbox's larger disk applies at its next start (resize2fs on the image)."""
    from runtime.manager import SandboxError

    spec = rt.run(rt.runtime.create(disk_gib=1))
    size = "df -B1M --output=size / | tail -1"
    try:
        code, out = rt.sh(spec.id, "echo kept > ~/kept; " + size)
        before = int(out)
        rt.run(rt.runtime.resize(spec.id, spec.limits, disk_gib=2))
        with pytest.raises(SandboxError) as refused:
            rt.run(rt.runtime.resize(spec.id, spec.limits, disk_gib=1))
        assert refused.value.status == 400
        rt.run(rt.runtime.stop(spec.id))
        rt.run(rt.runtime.start(spec.id))
        code, out = rt.sh(spec.id, "cat ~/kept; " + size)
        kept, after = out.split()
        assert kept == "kept" and before < 1024 < int(after) <= 2048, (before, after)
        code, out = rt.sh(spec.id, "dd if=/dev/zero of=/home/daytona/big bs=1M count=1300 2>&1 && echo fits", timeout=120)
        assert code == 0 and "fits" in out, out
    finally:
        rt.run(rt.runtime.delete(spec.id))


def test_create_names_its_snapshot_and_keeps_its_layers_after_the_snapshot_goes(tmp_path: Path) -> None:
    from runtime.manager import SandboxError
    from runtime.snapshots import SnapshotStore

    shared = shared_default()[0]
    store = SnapshotStore(tmp_path / "snapshots-state", layers_dir=shared.layers_dir)
    store.put(shared.get("default"))
    store.put(store.snapshot_of("team/tools:1", shared.get("default").layers))
    runtime = DirectRuntime(tmp_path / "state", rootfs_mode="snapshot", snapshots=store, disk_gib=1)
    try:
        with pytest.raises(SandboxError) as unknown:
            runtime.run(runtime.runtime.create(snapshot="no-such-snapshot"))
        assert unknown.value.status == 404 and "no-such-snapshot" in unknown.value.message
        # A root without a shell cannot run the toolbox's commands: refused before anything exists.
        tree = store.new_tree()
        (tree / "etc").mkdir()
        (tree / "etc" / "motd").write_text("no shell here\n")
        store.put(store.snapshot_of("no-shell", (store.publish_layer(tree),)))
        with pytest.raises(SandboxError) as unsupported:
            runtime.run(runtime.runtime.create(snapshot="no-shell"))
        assert unsupported.value.status == 400 and "/bin/sh" in unsupported.value.message, unsupported.value.message
        assert list(runtime.runtime.sandboxes_dir.iterdir()) == []
        spec = runtime.run(runtime.runtime.create(snapshot="team/tools:1"))
        assert spec.snapshot == "team/tools:1" and spec.layers == shared.get("default").layers
        store.delete("team/tools:1")
        runtime.run(runtime.runtime.stop(spec.id))
        runtime.run(runtime.runtime.start(spec.id))  # its layers, recorded in its spec, are still here
        assert runtime.sh(spec.id, "id -un") == (0, "daytona\n")
    finally:
        runtime.close()


def test_a_rebuilt_default_snapshot_replaces_the_pooled_sandboxes(tmp_path: Path) -> None:
    from runtime.snapshots import SnapshotStore

    shared = shared_default()[0]
    store = SnapshotStore(tmp_path / "snapshots-state", layers_dir=shared.layers_dir)
    base = shared.get("default")
    store.put(base)
    runtime = DirectRuntime(tmp_path / "state", rootfs_mode="snapshot", snapshots=store, pool_size=1, disk_gib=1)
    try:
        runtime.run(runtime.runtime.wait_pool_ready())
        # A new default: one more (tiny) layer on top.
        tree = store.new_tree()
        (tree / "etc").mkdir()
        (tree / "etc" / "i15core-rebuilt").write_text("new default\n")
        top = store.publish_layer(tree)
        store.put(store.snapshot_of("default", (*base.layers, top)))
        spec = runtime.run(runtime.runtime.create())
        assert spec.layers == (*base.layers, top)
        assert runtime.sh(spec.id, "cat /etc/i15core-rebuilt") == (0, "new default\n")
        runtime.run(runtime.runtime.wait_pool_ready())
        assert all(r.root is not None and r.root.layers == spec.layers for r in runtime.runtime.pool)
    finally:
        runtime.close()
