"""Built images out to a real registry (runtime/images/export.py): an image our Builder made
(a whiteout, an opaque directory, hard links, set-id bits, xattrs, a device node, a FIFO,
files of another user) exported and pushed with skopeo to a local docker-registry, then
read back by independent readers: skopeo + `umoci unpack` (files and the runtime config it
derives), `skopeo inspect --config`, and our own ImageImporter against the kernel's own
overlay of the built layers. Root only (builds, umoci unpack, overlay mounts)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.images.builder import Builder, Built
from runtime.images.export import push, write_layer_tar, write_layout
from runtime.images.oci import ImageConfig, ImageError, ImageImporter, registry_reference
from runtime.snapshots import SnapshotStore
from tests.helpers import free_port
from tests.image_helpers import local_registry, registry_with_image, tiny_rootfs
from tests.system import requires

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="image builds need root (idmapped mounts)"),
              requires("skopeo", "umoci", "docker-registry")]

XATTR = ("user.note", b"\xff\x00binary value")


def _base_rootfs(dest: Path) -> Path:
    """tiny_rootfs plus what the build deletes and replaces, and what tar must keep."""
    tiny_rootfs(dest)
    (dest / "etc/remove-me").write_text("deleted by the build\n")
    (dest / "opt/replace/sub").mkdir(parents=True)
    (dest / "opt/replace/old").write_text("old\n")
    (dest / "opt/replace/sub/older").write_text("older\n")
    (dest / "data").mkdir()
    (dest / "data/one").write_text("linked\n")
    os.link(dest / "data/one", dest / "data/two")
    (dest / "data/tagged").write_text("has an xattr\n")
    os.setxattr(dest / "data/tagged", *XATTR)
    os.chmod(dest / "usr/bin/true", 0o4755)
    os.mkfifo(dest / "data/fifo", 0o640)
    os.mknod(dest / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    return dest


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with registry_with_image(tmp_path_factory.mktemp("registry"), "base:1", _base_rootfs,
                             {"FROM_BASE": "yes"}) as address:
        yield address


BUILD = """FROM {registry}/base:1
RUN rm /etc/remove-me && rm -rf /opt/replace && mkdir /opt/replace && echo new > /opt/replace/new \
 && mkdir /data2 && echo pair > /data2/a && ln /data2/a /data2/b && chmod 640 /data2/a
ENV GREETING="hello world"
WORKDIR /srv/app
USER daytona
RUN echo mine > /tmp/mine
ENTRYPOINT ["sh", "-c"]
CMD ["echo hi"]
"""


@pytest.fixture(scope="module")
def built(registry: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[SnapshotStore, Built]:
    work = tmp_path_factory.mktemp("built")
    store = SnapshotStore(work / "state", layers_dir=work / "layers")
    builder = Builder(store, ImageImporter(store, work / "state" / "images"))
    lines: list[str] = []
    result = asyncio.run(builder.build(BUILD.format(registry=registry), lines.append))
    return store, result


def _config(result: Built) -> ImageConfig:
    return ImageConfig(env=result.env, workdir=result.workdir, user=result.user, entrypoint=result.entrypoint,
                       cmd=result.cmd)


def _describe(root: Path) -> dict[str, tuple[Any, ...]]:
    """What a reader of the tree sees: each entry's type, mode, owner, content (files:
    hash and mtime), target (links), device number and xattrs but overlayfs' own."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            kind = stat.S_IFMT(st.st_mode)
            detail: Any = None
            if kind == stat.S_IFREG:
                with open(path, "rb") as f:
                    detail = (hashlib.sha256(f.read()).hexdigest(), int(st.st_mtime))
            elif kind == stat.S_IFLNK:
                detail = os.readlink(path)
            elif kind in (stat.S_IFCHR, stat.S_IFBLK):
                detail = st.st_rdev
            xattrs = tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False))
                                  for n in os.listxattr(path, follow_symlinks=False)
                                  if not n.startswith("trusted.overlay.")))
            out[os.path.relpath(path, root)] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, detail, xattrs)
    return out


def _overlay_view(store: SnapshotStore, layers: tuple[str, ...]) -> dict[str, Any]:
    """The built image as the kernel's overlayfs shows it (read-only, mounted in a mount
    namespace of a child's own, which takes the mount with it), described by that child."""
    import sys

    lower = ":".join(str(store.layer_path(d)) for d in reversed(layers))
    merged = store.new_tree()
    code = ("import json, subprocess, sys; from tests.test_image_export import _describe, _jsonable; "
            "subprocess.run(['mount', '-t', 'overlay', 'overlay', '-o', 'ro,lowerdir=' + sys.argv[1], sys.argv[2]], "
            "check=True); print(json.dumps(_jsonable(_describe(sys.argv[2]))))")
    try:
        out = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c", code, lower,
                              str(merged)], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).parent.parent).stdout
    finally:
        merged.rmdir()
    return json.loads(out)


def _jsonable(description: dict[str, tuple[Any, ...]]) -> dict[str, Any]:
    return json.loads(json.dumps({k: [list(x) if isinstance(x, tuple) else x for x in v]
                                  for k, v in description.items()}, default=lambda b: b.hex()))


def test_the_layer_tars_carry_whiteouts_opaque_dirs_and_links(built: tuple[SnapshotStore, Built],
                                                              tmp_path: Path) -> None:
    store, result = built
    run_layer = store.layer_path(result.layers[1])  # the first RUN's upper directory
    whiteout = os.lstat(run_layer / "etc/remove-me")
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0  # overlayfs' own format on disk
    assert os.getxattr(run_layer / "opt/replace", "trusted.overlay.opaque") == b"y"
    empty = store.publish_layer(store.new_tree())  # e.g. a step that changed nothing: no blob, no diff_id
    layers = (*result.layers[:1], empty, *result.layers[1:])
    exported = write_layout(store, layers, _config(result), tmp_path / "layout", "t")
    assert [layer.source for layer in exported.layers] == list(result.layers)
    with tarfile.open(tmp_path / "layout/blobs/sha256" / exported.layers[1].digest.split(":")[1]) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["etc/.wh.remove-me"].isreg() and members["etc/.wh.remove-me"].size == 0
    assert members["opt/replace/.wh..wh..opq"].isreg()
    assert list(members).index("opt/replace") < list(members).index("opt/replace/.wh..wh..opq")
    assert members["data2/b"].islnk() and members["data2/b"].linkname == "data2/a"
    assert not any("trusted.overlay" in key for m in members.values() for key in m.pax_headers)
    # The digest is the tar's own (an uncompressed blob: digest = diff_id).
    blob = (tmp_path / "layout/blobs/sha256" / exported.layers[1].digest.split(":")[1]).read_bytes()
    assert f"sha256:{hashlib.sha256(blob).hexdigest()}" == exported.layers[1].digest
    config = json.loads((tmp_path / "layout/blobs/sha256" / exported.config_digest.split(":")[1]).read_text())
    assert config["rootfs"]["diff_ids"] == [layer.digest for layer in exported.layers]


def test_an_exported_image_reads_back_the_same_with_umoci_and_our_importer(
        built: tuple[SnapshotStore, Built], registry: str, tmp_path: Path) -> None:
    store, result = built
    lines: list[str] = []
    reference = f"{registry}/exported/tiny:1"
    pushed = asyncio.run(push(store, result.layers, _config(result), reference, lines.append))
    assert pushed.digest.startswith("sha256:") and any("Copying blob" in line for line in lines), lines
    assert not list(store.layers_dir.glob(".tmp-*"))  # the layout is gone

    # An independent reader: skopeo pulls, umoci unpacks a runtime bundle.
    subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{reference}",
                    f"oci:{tmp_path / 'pulled'}:x"], check=True)
    subprocess.run(["umoci", "unpack", "--image", f"{tmp_path / 'pulled'}:x", str(tmp_path / "bundle")], check=True,
                   stdout=subprocess.DEVNULL)
    rootfs = tmp_path / "bundle/rootfs"
    assert not os.path.lexists(rootfs / "etc/remove-me")
    assert (rootfs / "etc/passwd").is_file()
    assert sorted(os.listdir(rootfs / "opt/replace")) == ["new"]  # the old contents are gone
    assert (rootfs / "opt/replace/new").read_text() == "new\n"
    a, b = os.lstat(rootfs / "data2/a"), os.lstat(rootfs / "data2/b")
    assert a.st_ino == b.st_ino and stat.S_IMODE(a.st_mode) == 0o640
    assert os.lstat(rootfs / "data/one").st_ino == os.lstat(rootfs / "data/two").st_ino
    mine = os.lstat(rootfs / "tmp/mine")
    assert (mine.st_uid, mine.st_gid) == (1000, 1000) and (rootfs / "tmp/mine").read_text() == "mine\n"
    assert stat.S_IMODE(os.lstat(rootfs / "tmp").st_mode) == 0o1777
    assert stat.S_IMODE(os.lstat(rootfs / "usr/bin/true").st_mode) == 0o4755
    assert os.getxattr(rootfs / "data/tagged", XATTR[0]) == XATTR[1]
    assert stat.S_ISFIFO(os.lstat(rootfs / "data/fifo").st_mode)
    null = os.lstat(rootfs / "dev/null")
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    assert os.readlink(rootfs / "bin") == "usr/bin"
    process = json.loads((tmp_path / "bundle/config.json").read_text())["process"]
    assert "GREETING=hello world" in process["env"] and "FROM_BASE=yes" in process["env"]
    assert process["cwd"] == "/srv/app" and process["args"] == ["sh", "-c", "echo hi"]
    assert process["user"]["uid"] == 1000  # umoci resolved USER daytona from the image's passwd
    raw = json.loads(subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--config", f"docker://{reference}"],
                                    capture_output=True, text=True, check=True).stdout)
    assert raw["os"] == "linux" and raw["architecture"] in ("amd64", "arm64")
    assert raw["config"]["User"] == "daytona" and raw["config"]["WorkingDir"] == "/srv/app"
    assert raw["config"]["Entrypoint"] == ["sh", "-c"] and raw["config"]["Cmd"] == ["echo hi"]

    # The round trip through our own import: exactly the files the built layers show.
    importer = ImageImporter(store, tmp_path / "images")
    imported = asyncio.run(importer.import_image(registry_reference(reference), lambda line: None))
    assert imported.config == _config(result)
    theirs = _jsonable(_describe(store.layer_path(imported.layer)))
    ours = _overlay_view(store, result.layers)
    assert "opt/replace/new" in ours and "opt/replace/old" not in ours and "etc/remove-me" not in ours
    assert theirs.keys() == ours.keys(), set(theirs) ^ set(ours)
    differ = {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}
    assert not differ, differ


def test_a_bad_or_unreachable_registry_says_why_and_leaves_nothing(built: tuple[SnapshotStore, Built]) -> None:
    store, result = built
    config = _config(result)
    for reference, message in (("Not A Reference", "not an image reference"),
                               (f"127.0.0.1:5000/x@sha256:{'0' * 64}", "not a digest"),
                               (f"127.0.0.1:{free_port()}/nobody/here:1", r"cannot push 127\.0\.0\.1:\d+/nobody/"
                                                                          r"here:1: .*connection refused"),
                               # Anything but loopback is spoken to over TLS, verified.
                               ("registry.invalid/x:1", r"cannot push registry\.invalid/x:1: .*https://registry\.invalid/")):
        with pytest.raises(ImageError, match=message):
            asyncio.run(push(store, result.layers, config, reference, lambda line: None))
        assert not list(store.layers_dir.glob(".tmp-*")), reference


def test_an_export_runs_beside_the_event_loop_and_a_cancel_leaves_no_layout(tmp_path: Path) -> None:
    from runtime.images.export import export_layout

    store = SnapshotStore(tmp_path / "state", layers_dir=tmp_path / "layers")
    tree = store.new_tree()
    chunk = os.urandom(256 << 10)
    for index in range(800):  # 200 MB in 800 files: the writer checks for a cancel per entry
        (tree / f"f{index:04}").write_bytes(chunk)
    layer = store.publish_layer(tree)

    async def scenario() -> tuple[int, bool]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticking = asyncio.create_task(ticker())
        export = asyncio.create_task(export_layout(store, (layer,), ImageConfig(), tmp_path / "layout"))
        await asyncio.sleep(0.3)
        export.cancel()
        with pytest.raises(asyncio.CancelledError):
            await export
        ticking.cancel()
        return ticks, (tmp_path / "layout").exists()

    ticks, left = asyncio.run(scenario())
    assert ticks >= 10  # the loop went on while the thread wrote
    assert not left


def test_what_a_layer_tar_cannot_say_is_refused_sockets_are_skipped_depth_is_no_limit(tmp_path: Path) -> None:
    import socket

    layer = tmp_path / "layer"
    (layer / "moved").mkdir(parents=True)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(layer / "socket"))
        with open(tmp_path / "tar", "wb") as out:
            _, _, entries = write_layer_tar(layer, out)
    assert entries == 1  # the directory; no entry for the socket
    import inspect
    import sys

    deep = layer / "deep"
    os.makedirs(deep / "/".join(["d"] * 400))
    (deep / "/".join(["d"] * 400) / "leaf").write_text("leaf\n")
    # Deeper than the stack allows, without a tree that deep for real (shutil.rmtree, and so
    # pytest's own cleanup, recurses per level: a 1200-level tree breaks them).
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(len(inspect.stack()) + 150)
    try:
        with open(tmp_path / "tar", "wb") as out:
            _, _, entries = write_layer_tar(layer, out)
    finally:
        sys.setrecursionlimit(limit)
    with tarfile.open(tmp_path / "tar") as tar:
        names = tar.getnames()
    assert entries == len(names) == 1 + 400 + 1 + 1  # deep, its 400 levels, the leaf, moved
    assert names[-2] == "deep/" + "d/" * 400 + "leaf" and names[-1] == "moved"
    os.setxattr(layer / "moved", "trusted.overlay.redirect", b"/elsewhere")
    with open(tmp_path / "tar", "wb") as out, pytest.raises(ImageError, match="redirect"):
        write_layer_tar(layer, out)
    os.removexattr(layer / "moved", "trusted.overlay.redirect")
    (layer / "moved/.wh.passwd").write_text("a file, not a deletion\n")
    with open(tmp_path / "tar", "wb") as out, pytest.raises(ImageError, match="mean deletions"):
        write_layer_tar(layer, out)


def test_an_images_created_time_is_source_date_epoch_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reproducible builds: with SOURCE_DATE_EPOCH the config (and so the manifest digest)
    of an unchanged image is the same on every push."""
    from runtime.imagecli import _created

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert _created() == "2023-11-14T22:13:20Z" == _created()
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "not a number")
    assert _created().startswith("20") and _created() != "2023-11-14T22:13:20Z"


def test_the_cli_checks_its_arguments_and_root_before_building(tmp_path: Path) -> None:
    import sys

    from tests.helpers import REPO_ROOT

    def cli(*words: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*prefix, sys.executable, "-m", "runtime", "--state-dir", str(tmp_path / "state"),
                               "image", *words], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})

    for words, message in ((("build", "nope"), "no image 'nope': the images are sandbox, proxy"),
                           (("push", "sandbox", "--tag", "Bad Ref"), "'Bad Ref' is not an image reference"),
                           (("push", "--tag", "127.0.0.1:5000/x:1"), "give one NAME"),
                           (("build", "proxy", "--tag", "127.0.0.1:5000/x:1"), "use it with --push"),
                           (("push", "proxy", "--tag", f"127.0.0.1:5000/x@sha256:{'0' * 64}"), "not a digest")):
        result = cli(*words)
        assert result.returncode == 2 and message in result.stderr, (words, result.stderr)
    assert not (tmp_path / "state").exists()  # nothing was built or recorded
    nobody = ("setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups")
    if subprocess.run([*nobody, sys.executable, "-c", "import runtime"], cwd=REPO_ROOT, capture_output=True,
                      env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}).returncode != 0:
        pytest.skip("nobody cannot run this checkout's python here")
    result = cli("push", "proxy", prefix=nobody)
    assert result.returncode == 1 and "building images needs root" in result.stderr, result.stderr


# ---- slow: the project's own images, through the real CLI ----------------------------------

def _passwd_ids(rootfs: Path, user: str) -> tuple[int, int]:
    for line in (rootfs / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user or fields[2] == user:
            return int(fields[2]), int(fields[3])
    raise AssertionError(f"no {user} in the image's /etc/passwd")


def _run_entrypoint(rootfs: Path, config: dict[str, Any], extra: list[str],
                    **popen: Any) -> subprocess.Popen[bytes]:
    """The image's ENTRYPOINT (+ `extra`) as a container would run it: the unpacked rootfs as
    `/` under bwrap with a fresh /proc and /dev, its own pid, ipc, uts and cgroup namespaces
    (the host's network: the test reaches it on loopback), the image's Env and WorkingDir,
    as its User (dropped to by the image's own python before exec: bwrap's --uid needs a
    user namespace, where the image's other ids would not be mapped)."""
    inner = config["config"]
    uid, gid = _passwd_ids(rootfs, inner.get("User") or "0")
    argv = ["bwrap", "--bind", str(rootfs), "/", "--proc", "/proc", "--dev", "/dev",
            "--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup", "--die-with-parent",
            "--clearenv", "--chdir", inner.get("WorkingDir") or "/"]
    for item in inner.get("Env") or ():
        name, _, value = item.partition("=")
        argv += ["--setenv", name, value]
    drop = ("import os, sys; os.setgroups([]); os.setgid(int(sys.argv[1])); os.setuid(int(sys.argv[2])); "
            "os.execv(sys.argv[3], sys.argv[3:])")
    entrypoint = [*inner["Entrypoint"], *extra]
    return subprocess.Popen([*argv, "--", "/opt/toolbox/bin/python", "-c", drop, str(gid), str(uid), *entrypoint],
                            **popen)


def _wait_for(url: str, process: subprocess.Popen[bytes], headers: dict[str, str] | None = None,
              timeout: float = 60) -> Any:
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            response = httpx.get(url, headers=headers, timeout=5)
            if response.status_code == 200:
                return response.json()
        except httpx.HTTPError:
            pass
        assert process.poll() is None, f"exited {process.returncode}"
        assert time.monotonic() < deadline, f"{url} did not answer"
        time.sleep(0.2)


def _unpack(reference: str, work: Path, name: str) -> tuple[Path, dict[str, Any]]:
    import time

    started = time.monotonic()
    subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{reference}",
                    f"oci:{work / 'pulled'}:{name}"], check=True)
    rootfs = work / f"{name}-rootfs"
    subprocess.run(["umoci", "raw", "unpack", "--image", f"{work / 'pulled'}:{name}", str(rootfs)], check=True)
    config = json.loads(subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--config", f"docker://{reference}"],
                                       capture_output=True, text=True, check=True).stdout)
    print(f"{name}: pulled and unpacked in {time.monotonic() - started:.1f} s")
    return rootfs, config


@pytest.mark.timeout(900)
@requires("bwrap")
def test_the_projects_images_build_push_and_run(tmp_path: Path) -> None:
    """The real CLI as a subprocess, on the machine's shared layers dir (the sandbox image's
    base stage is the default snapshot's build: a cache hit): `image build sandbox` and
    `image push proxy` to a local registry. The sandbox image's ENTRYPOINT, run from its
    built layers, answers GET /version as its USER; the proxy image, pulled back and
    unpacked by skopeo and umoci, serves /health and reaches that daemon through
    /toolbox/{id}/. (Pushing and pulling the sandbox image too would add a minute and
    prove nothing the round trip above and the proxy's do not.)"""
    import secrets
    import sys
    import time

    from runtime.snapshots import SnapshotStore
    from tests.helpers import REPO_ROOT
    from tests.layer_helpers import overlay, shared_default, shared_layers_dir
    from tests.proxy_helpers import stop

    shared_default()  # built once per machine (tests/conftest.py), not counted here
    with local_registry(tmp_path / "registry") as address:
        env = {**os.environ, "REGISTRY": address, "RUNTIME_LAYERS_DIR": str(shared_layers_dir())}
        summary: list[str] = []
        for words in (("build", "sandbox"), ("push", "proxy")):
            started = time.monotonic()
            result = subprocess.run([sys.executable, "-m", "runtime", "--state-dir", str(tmp_path / "state"),
                                     "image", *words], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                                    timeout=840)
            assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
            summary += list(dict.fromkeys(line for line in result.stdout.splitlines()
                                          if line.startswith(("sandbox: built", "proxy: built"))))
            print(f"\npython -m runtime image {' '.join(words)}: {time.monotonic() - started:.0f} s")
        print("\n".join(summary))
        assert len(summary) == 2, summary

        store = SnapshotStore(tmp_path / "state", layers_dir=shared_layers_dir())
        layers, image = store.cached_build("project-image-sandbox"), store.cached_config("project-image-sandbox")
        assert layers is not None and image is not None  # the CLI's record of its last build
        assert image["user"] == "daytona" and image["workdir"] == "/home/daytona"
        config = {"config": {"User": image["user"], "WorkingDir": image["workdir"], "Entrypoint": image["entrypoint"],
                             "Env": [f"{name}={value}" for name, value in image["env"].items()]}}
        with overlay(store.lower_dirs(layers), tmp_path / "sandbox-root") as rootfs:
            port = free_port()
            daemon = _run_entrypoint(rootfs, config, ["--host", "127.0.0.1", "--port", str(port),
                                                      "--sandbox-id", "alpha"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                started = time.monotonic()
                version = _wait_for(f"http://127.0.0.1:{port}/version", daemon)
                print(f"sandbox image's daemon answered /version in {time.monotonic() - started:.1f} s: {version}")
                assert "version" in version
                import httpx

                ran = httpx.post(f"http://127.0.0.1:{port}/process/execute", json={"command": "id -un"},
                                 timeout=30).json()
                assert ran["result"].strip() == "daytona", ran  # the image's USER

                proxy_rootfs, proxy_config = _unpack(f"{address}/sandbox-toolbox/proxy:latest", tmp_path, "proxy")
                assert proxy_config["config"]["User"] == "sandbox-proxy"
                assert _passwd_ids(proxy_rootfs, "sandbox-proxy") == (10001, 10001)
                helped = _run_entrypoint(proxy_rootfs, proxy_config, ["--help"], stdout=subprocess.PIPE)
                out, _ = helped.communicate(timeout=60)
                assert helped.returncode == 0 and b"--registry" in out, out
                registry_file = proxy_rootfs / "etc/sandboxes.json"
                registry_file.write_text(json.dumps({"sandboxes": {"alpha": {"url": f"http://127.0.0.1:{port}"}}}))
                key = secrets.token_hex(16)
                proxy_port = free_port()
                proxy_config["config"].setdefault("Env", []).append(f"PROXY_API_KEYS={key}")
                proxy = _run_entrypoint(proxy_rootfs, proxy_config,
                                        ["--host", "127.0.0.1", "--port", str(proxy_port), "--domain",
                                         "sandboxes.test", "--registry", "file:/etc/sandboxes.json"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                try:
                    health = _wait_for(f"http://127.0.0.1:{proxy_port}/health", proxy, {"Host": "sandboxes.test"})
                    assert health["status"] == "ok"
                    through = _wait_for(f"http://127.0.0.1:{proxy_port}/toolbox/alpha/version", proxy,
                                        {"Host": "sandboxes.test", "Authorization": f"Bearer {key}"})
                    assert through == version
                finally:
                    stop(proxy)
            finally:
                stop(daemon)
