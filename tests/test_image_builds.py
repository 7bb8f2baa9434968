"""Images into layers, for real: a local docker-registry, skopeo and umoci, and RUN steps in
build sandboxes (runtime/images/). Root only (idmapped mounts, a real uid range)."""

from __future__ import annotations

import asyncio
import http.server
import ipaddress
import os
import secrets
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.images.builder import Builder, BuildError, Built
from runtime.images.oci import ImageError, ImageImporter, registry_reference
from runtime import cgroups
from runtime.images.stepnet import NO_NETWORK, StepNetworks
from runtime.images.steps import BUILD_ID_BASE, Confinement
from runtime.network import Network
from runtime.snapshots import SnapshotStore
from tests import net_helpers
from tests.layer_helpers import default_snapshot
from tests.image_helpers import package_index, push_rootfs, python_rootfs, registry_with_image, tiny_rootfs, tiny_wheel
from tests.net_helpers import DNS_NAME, INTERNET_A, INTERNET_HOST, Namespace

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="image builds need root (idmapped mounts)")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`127.0.0.1:PORT/tiny:1`: a one-layer image of the host's shell tools, pushed to a
    real registry."""
    with registry_with_image(tmp_path_factory.mktemp("registry"), "tiny:1", tiny_rootfs,
                             {"FROM_IMAGE": "yes"}) as address:
        yield address


@pytest.fixture(scope="module")
def python_image(registry: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    work = tmp_path_factory.mktemp("python-image")
    push_rootfs(python_rootfs(work / "rootfs"), work, f"{registry}/python:1")
    return f"{registry}/python:1"


@pytest.fixture(scope="module")
def internet() -> Iterator[Namespace]:
    """The fake internet (tests/net_helpers.py), where the runtime's NAT sends step egress."""
    if not net_helpers.is_root():
        pytest.skip("step networks need root and nftables")
    ns = net_helpers.internet()
    try:
        yield ns
    finally:
        ns.close()


@pytest.fixture(scope="module")
def step_networks(internet: Namespace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StepNetworks]:
    """A runtime's sandbox network (its nftables table, NAT) for build steps; the fake
    internet's DNS responder as the host's resolver, which the step's gateway DNATs to."""
    net = Network(tmp_path_factory.mktemp("stepnet"), net_helpers.runtime_range(), resolver=INTERNET_A)
    net.open()
    try:
        yield StepNetworks(net)
    finally:
        net.close()


@pytest.fixture(scope="module")
def egress_networks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StepNetworks]:
    """A runtime's sandbox network with the host's resolver: steps that install packages
    from the machine's real registries (apt-get, pip), NAT-ed as a sandbox's egress."""
    if not net_helpers.is_root():
        pytest.skip("step networks need root and nftables")
    net = Network(tmp_path_factory.mktemp("egress"), net_helpers.runtime_range())
    net.open()
    try:
        yield StepNetworks(net)
    finally:
        net.close()


def _builder(tmp_path: Path, networks: StepNetworks | None = None) -> tuple[SnapshotStore, Builder]:
    store = SnapshotStore(tmp_path / "state", layers_dir=tmp_path / "layers")
    confinement = (lambda: Confinement(cgroups.Backend(), network=networks)) if networks is not None else None
    return store, Builder(store, ImageImporter(store, tmp_path / "state" / "images"), confinement=confinement)


def _build(builder: Builder, text: str) -> tuple[Built, list[str]]:
    lines: list[str] = []
    try:
        built = asyncio.run(builder.build(text, lines.append))
    except BuildError as exc:
        raise BuildError("\n".join([str(exc), "build log:", *lines])) from None
    return built, lines


def test_an_image_is_pulled_once_and_then_comes_from_the_cache(tmp_path: Path, registry: str) -> None:
    store = SnapshotStore(tmp_path / "state", layers_dir=tmp_path / "layers")
    importer = ImageImporter(store, tmp_path / "state" / "images")
    lines: list[str] = []
    first = asyncio.run(importer.import_image(registry_reference(f"{registry}/tiny:1"), lines.append))
    assert any("Copying blob" in line for line in lines), lines  # skopeo really pulled it
    assert first.config.env["FROM_IMAGE"] == "yes"
    root = store.layer_path(first.layer)
    assert (root / "usr/bin/sh").is_file() and (root / "usr/bin/sh").stat().st_uid == 0
    lines.clear()
    again = ImageImporter(store, tmp_path / "state" / "images")  # a new process: the cache is on disk
    second = asyncio.run(again.import_image(registry_reference(f"{registry}/tiny:1"), lines.append))
    assert second.layer == first.layer and second.digest == first.digest
    assert not any("Copying blob" in line for line in lines), lines
    assert not list(store.layers_dir.glob(".tmp-*"))


def test_an_image_that_cannot_be_pulled_says_why(tmp_path: Path, registry: str) -> None:
    store, builder = _builder(tmp_path)
    with pytest.raises(BuildError, match="cannot pull .*nope:1: .*manifest unknown"):
        _build(builder, f"FROM {registry}/nope:1\n")
    with pytest.raises(BuildError, match="cannot pull debian:bookworm-slim"):
        _build(builder, "FROM debian:bookworm-slim\n")  # docker.io: unreachable here
    with pytest.raises(ImageError, match="not an image reference"):
        registry_reference("oci:/etc:x")  # a tenant never names the server's files
    assert not list(store.layers_dir.glob(".tmp-*"))


def test_a_build_runs_its_steps_and_keeps_their_config(tmp_path: Path, registry: str) -> None:
    store, builder = _builder(tmp_path)
    built, lines = _build(builder, f"""ARG VERSION=1
FROM {registry}/tiny:1
ARG VERSION
RUN echo building $VERSION; mkdir -p /opt/app; echo "v$VERSION" > /opt/app/version
ENV GREETING='hello world' OTHER=x
WORKDIR /srv/work
RUN echo "$GREETING $OTHER $FROM_IMAGE" > note; pwd
USER daytona
RUN id -u; touch /tmp/mine; cp /usr/bin/true /tmp/setuid; chmod 4755 /tmp/setuid
ENTRYPOINT ["sh", "-c"]
CMD ["echo hi"]
""")
    assert "building 1" in lines and "/srv/work" in lines and "1000" in lines, lines
    assert built.env == {"FROM_IMAGE": "yes", "GREETING": "hello world", "OTHER": "x"}
    assert built.workdir == "/srv/work" and built.user == "daytona"
    assert built.entrypoint == ["sh", "-c"] and built.cmd == ["echo hi"]
    layers = [store.layer_path(d) for d in built.layers]

    def find(inside: str) -> Path:
        for layer in reversed(layers):
            if os.path.lexists(layer / inside):
                return layer / inside
        raise AssertionError(f"{inside} is in no layer")

    assert find("opt/app/version").read_text() == "v1\n"
    assert find("srv/work/note").read_text() == "hello world x yes\n"
    # Canonical ids in the layers, whatever host ids the steps ran as.
    assert find("opt/app/version").stat().st_uid == 0
    mine = find("tmp/mine").stat()
    assert (mine.st_uid, mine.st_gid) == (1000, 1000)
    assert stat.S_IMODE(find("tmp/setuid").stat().st_mode) == 0o4755  # the shift kept the set-id bit
    assert all(os.lstat(p).st_uid < 65536 for layer in layers for p in layer.rglob("*"))


def test_stages_build_on_each_other_and_a_target_stops_at_its_stage(tmp_path: Path, registry: str) -> None:
    """`FROM image AS name`, a later `FROM name`, `target` (docker build --target): the
    default snapshot is the sandbox Dockerfile's `base` stage, the image its last."""
    store, builder = _builder(tmp_path)
    text = f"""ARG GREETING=hi
FROM {registry}/tiny:1 AS First
ENV STAGE=first
RUN mkdir -p /opt && echo one > /opt/one
USER daytona
WORKDIR /home/daytona
FROM first AS second
ARG GREETING
USER root
RUN echo "$GREETING $STAGE" > /opt/two
USER daytona
ENTRYPOINT ["sh"]
FROM {registry}/tiny:1
RUN touch /opt-unrelated
"""
    first = asyncio.run(builder.build(text, lambda line: None, target="first"))
    lines: list[str] = []
    second = asyncio.run(builder.build(text, lines.append, target="SECOND"))
    last = asyncio.run(builder.build(text, lambda line: None))
    assert first.user == "daytona" and first.workdir == "/home/daytona" and first.env["STAGE"] == "first"
    assert second.layers[:len(first.layers)] == first.layers  # built on it, its steps from the cache
    assert second.steps_cached == 2 and "Using stage first" in lines, lines  # RUN and WORKDIR
    assert (store.layer_path(second.layers[-1]) / "opt/two").read_text() == "hi first\n"
    assert second.user == "daytona" and second.entrypoint == ["sh"] and second.env["STAGE"] == "first"
    assert "STAGE" not in last.env and not set(last.layers[1:]) & set(second.layers)
    assert not any(line.startswith("Step") and "touch /opt-unrelated" in line for line in lines)
    with pytest.raises(BuildError, match="no stage named 'third' .*first, second"):
        asyncio.run(builder.build(text, lambda line: None, target="third"))


def test_run_is_isolated_from_the_host(tmp_path: Path, registry: str) -> None:
    store, builder = _builder(tmp_path)
    canary = f"canary-{secrets.token_hex(4)}"
    victim = tmp_path / "victim"
    victim.write_text("host file")
    os.chown(victim, 0, 0)
    built, lines = _build(builder, f"""FROM {registry}/tiny:1
RUN echo inside > /{canary}; cat /proc/self/uid_map; ls {tmp_path} 2>&1 || true
RUN ln -s {victim} /link-to-host-file; ln -s / /link-to-root; ln -s /etc /etc-link; echo done
""")
    # The step's root was an unprivileged host id, with nothing of the host in view.
    assert ["0", str(BUILD_ID_BASE), "65536"] in [line.split() for line in lines], lines
    assert any("No such file or directory" in line for line in lines), lines
    assert not Path(f"/{canary}").exists()
    layers = [store.layer_path(d) for d in built.layers]
    assert any((layer / canary).read_text() == "inside\n" for layer in layers if (layer / canary).exists())
    # Publishing shifted ids without following the step's symlinks: the host file is untouched.
    st = victim.stat()
    assert (st.st_uid, st.st_gid) == (0, 0) and victim.read_text() == "host file"
    link = next(layer / "link-to-host-file" for layer in layers if os.path.lexists(layer / "link-to-host-file"))
    assert stat.S_ISLNK(os.lstat(link).st_mode) and os.lstat(link).st_uid == 0
    host_etc = os.stat("/etc")
    assert (host_etc.st_uid, host_etc.st_gid) == (0, 0)


def test_a_failing_run_fails_the_build_with_its_output(tmp_path: Path, registry: str) -> None:
    store, builder = _builder(tmp_path)
    lines: list[str] = []
    with pytest.raises(BuildError, match="returned a non-zero code: 7"):
        asyncio.run(builder.build(f"FROM {registry}/tiny:1\nRUN echo the step says why >&2; exit 7\n",
                                  lines.append))
    assert "the step says why" in lines
    assert not list(store.layers_dir.glob(".tmp-*"))  # nothing half-done left


def test_an_unchanged_rebuild_runs_nothing(tmp_path: Path, registry: str) -> None:
    store, builder = _builder(tmp_path)
    text = f"FROM {registry}/tiny:1\nRUN echo one > /one\nWORKDIR /w\nRUN echo two > two\n"
    first, _ = _build(builder, text)
    again, lines = _build(builder, text)
    assert again.layers == first.layers
    assert again.steps_run == 0 and again.steps_cached == 3, lines
    changed, _ = _build(builder, text.replace("two > two", "three > two"))
    assert changed.steps_run == 1 and changed.layers[:-1] == first.layers[:-1]


@pytest.mark.parametrize("text, message", [
    ("RUN echo no from\n", "starts with FROM"),
    ("ARG A=1\n", "needs a FROM"),
    ("FROM a\nCOPY x /x\n", "has no build context"),
    ("FROM a\nHEALTHCHECK CMD true\n", "HEALTHCHECK is not supported"),
    ("FROM a\nRUN echo \\\n", "continued line"),
])
def test_dockerfiles_this_builder_cannot_build_are_refused_before_running(
        tmp_path: Path, text: str, message: str) -> None:
    _, builder = _builder(tmp_path)
    with pytest.raises(BuildError, match=message):
        _build(builder, text)


def _host_addresses() -> list[str]:
    """Every IPv4 address of the host but loopback's (its LAN, the fake internet's link, the
    sandbox gateways of every runtime on the machine)."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    addresses = [line.split()[3].split("/")[0] for line in out.splitlines()]
    return [a for a in addresses if not ipaddress.IPv4Address(a).is_loopback]


class _HostServer:
    """An HTTP server on the host (all addresses, a free port): what a step must not reach."""

    def __init__(self) -> None:
        self.server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), http.server.SimpleHTTPRequestHandler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _probe_step(targets: list[str]) -> str:
    return f"RUN echo {secrets.token_hex(4)}; {net_helpers.python_command(net_helpers.PROBE, *targets)}\n"


def test_a_step_cannot_reach_the_hosts_services_but_reaches_the_internet(
        tmp_path: Path, python_image: str, step_networks: StepNetworks) -> None:
    """The attack: `RUN curl http://127.0.0.1:6379/` against the host's Redis. A step runs
    on a sandbox's network: the host's loopback and its other addresses are closed, the
    (fake) internet is reached through NAT, names resolve through the step's gateway."""
    host = _HostServer()
    try:
        others = [f"{a}:{host.port}" for a in _host_addresses()]
        assert f"{INTERNET_HOST}:{host.port}" in others
        store, builder = _builder(tmp_path, step_networks)
        built, lines = _build(builder, f"FROM {python_image}\n"
                                       + _probe_step([f"127.0.0.1:{host.port}", f"{INTERNET_A}:80", *others])
                                       + f"RUN cat /etc/resolv.conf; python3 -c \"import socket; "
                                         f"print('resolved', socket.gethostbyname('{DNS_NAME}'))\"\n")
    finally:
        host.close()
    results = [line for line in lines if line.startswith(("open", "closed"))]
    assert len(results) == 2 + len(others), lines
    assert results[0].startswith("closed"), lines  # the host's loopback
    assert results[1] == f"open from {INTERNET_HOST}", lines  # masqueraded, as a sandbox's egress
    assert all(r.startswith("closed") for r in results[2:]), list(zip(others, results[2:], strict=True))
    assert any(line.startswith("[build step network: 10.213.") for line in lines), lines
    assert f"resolved {INTERNET_A}" in lines, lines  # DNS via the gateway's DNAT
    assert not any(line.startswith("nameserver 127.") for line in lines), lines
    # The empty mount point made for the step's resolv.conf (the image has none) is gone.
    assert not [d for d in built.layers if os.path.lexists(store.layer_path(d) / "etc/resolv.conf")]
    assert not step_networks._own  # noqa: SLF001 -- every slot released
    assert not [n for n in net_helpers.sh("ip", "netns", "list").stdout.split()
                if n.startswith(step_networks.net.prefix)]


def test_without_a_sandbox_network_a_step_has_no_network(tmp_path: Path, python_image: str,
                                                         internet: Namespace) -> None:
    host = _HostServer()
    try:
        _, builder = _builder(tmp_path)
        _, lines = _build(builder, f"FROM {python_image}\n"
                                   + _probe_step([f"127.0.0.1:{host.port}", f"{INTERNET_A}:80"]))
    finally:
        host.close()
    assert NO_NETWORK in lines, lines
    results = [line for line in lines if line.startswith(("open", "closed"))]
    assert len(results) == 2 and all(r.startswith("closed") for r in results), lines


def test_pip_install_from_a_package_index(tmp_path: Path, python_image: str, internet: Namespace,
                                          step_networks: StepNetworks) -> None:
    """The SDK's own Dockerfile for `pip_install` against a tiny index on the (fake)
    internet, as a sandbox reaches it, then the installed package runs in the next step."""
    from daytona import Image

    tiny_wheel(tmp_path / "wheels", "tinypkg", "0.1", "installed-from-the-local-index")
    store, builder = _builder(tmp_path, step_networks)
    with package_index(tmp_path / "wheels", internet.name, INTERNET_A) as index:
        image = (Image.base(python_image)
                 .pip_install("tinypkg", find_links=[index], extra_options=f"--no-index --trusted-host {INTERNET_A}")
                 .run_commands("python -c 'import tinypkg; print(tinypkg.VALUE)'"))
        built, lines = _build(builder, image.dockerfile())
    assert "installed-from-the-local-index" in lines, lines
    assert any("Successfully installed tinypkg-0.1" in line for line in lines), lines


def test_a_step_has_the_sandbox_limits_and_syscall_filter(tmp_path: Path, registry: str) -> None:
    from runtime import cgroups
    from runtime.images.steps import Confinement
    from runtime.limits import Limits

    backend = cgroups.detect()
    if not isinstance(backend, (cgroups.CgroupV2, cgroups.CgroupV1)):
        pytest.skip("no writable cgroup hierarchy here")
    store = SnapshotStore(tmp_path / "state", layers_dir=tmp_path / "layers")
    builder = Builder(store, ImageImporter(store, tmp_path / "state" / "images"),
                      confinement=lambda: Confinement(backend, Limits(pids=32), "sbx-test-build-"))
    lines: list[str] = []
    with pytest.raises(BuildError, match="non-zero code"):  # the shell gives up when fork fails
        asyncio.run(builder.build(f"""FROM {registry}/tiny:1
RUN grep Seccomp: /proc/self/status; i=0; while [ $i -lt 64 ]; do sleep 2 & i=$((i+1)); done 2>&1; wait
""", lines.append))
    assert any(line.split() == ["Seccomp:", "2"] for line in lines), lines  # filtered, as a sandbox is
    assert any("fork" in line.lower() for line in lines), lines  # pids.max held the loop
    assert not [d for d in backend.parents_dirs()[0].iterdir() if d.name.startswith("sbx-test-build-")]


def test_apt_get_and_sudo_work_in_steps_built_on_the_default_snapshot(tmp_path: Path,
                                                                     egress_networks: StepNetworks) -> None:
    """Real package installs: root of the build's namespace owns the whole 65536-id range,
    so apt drops to _apt and sudo switches users as on any machine."""
    from runtime.images.service import LocalImages

    shared, _ = default_snapshot()
    store = SnapshotStore(tmp_path / "state", layers_dir=shared.layers_dir)
    store.put(shared.get("default"))
    images = LocalImages(store, tmp_path / "state", lambda: Confinement(cgroups.Backend(), network=egress_networks))
    lines: list[str] = []
    nonce = secrets.token_hex(4)  # the layers dir is shared: no cache hit from an earlier run
    built = asyncio.run(images.build("cowsay", f"FROM default\nRUN echo {nonce}; apt-get update -qq && apt-get install "
                                     "-y -qq cowsay >/dev/null && /usr/games/cowsay moo\nRUN sudo -u daytona id -un\n",
                                     lines.append))
    assert any("< moo >" in line for line in lines) and "daytona" in lines, lines
    snapshot = store.get("cowsay")
    assert snapshot.user == "daytona" and snapshot.layers[0] == shared.get("default").layers[0]
    installed = [store.layer_path(d) / "usr/games/cowsay" for d in built.layers[1:]]
    assert any(p.is_file() and p.stat().st_uid == 0 for p in installed), installed


def test_user_lookup_never_follows_a_symlink_a_step_planted(tmp_path: Path, registry: str) -> None:
    """USER names are resolved on the host from the layers' /etc/passwd: a step that makes it
    a symlink to a host file gets a refusal, not the host file read."""
    _, builder = _builder(tmp_path)
    secret = tmp_path / "host-passwd"
    secret.write_text("daytona:x:0:0::/:/bin/sh\n")  # would make "daytona" root if it were read
    with pytest.raises(BuildError, match="USER daytona: the image has no /etc/passwd"):
        _build(builder, f"FROM {registry}/tiny:1\nRUN rm /etc/passwd; ln -s {secret} /etc/passwd\n"
                        "USER daytona\nRUN id\n")


def test_copy_from_a_local_context_and_what_it_refuses(tmp_path: Path, registry: str) -> None:
    """Operator builds (the project's own image) read COPY sources from a context directory;
    nothing outside it is reachable, and copies are root's with their modes."""
    store, builder = _builder(tmp_path)
    ctx = tmp_path / "context"
    (ctx / "app" / "lib").mkdir(parents=True)
    (ctx / "app" / "main.sh").write_text("echo main\n")
    os.chmod(ctx / "app" / "main.sh", 0o755)
    (ctx / "app" / "lib" / "x.txt").write_text("x\n")
    (ctx / "notes.txt").write_text("notes\n")
    (tmp_path / "secret").write_text("host secret\n")
    os.symlink(tmp_path / "secret", ctx / "link-out")
    os.symlink(tmp_path, ctx / "dir-out")
    text = f"FROM {registry}/tiny:1\nWORKDIR /srv\nCOPY app /opt/app\nCOPY notes.txt link-out ./\nRUN sh /opt/app/main.sh; cat notes.txt\n"
    built = asyncio.run(builder.build(text, lambda line: None, context=ctx))
    layers = [store.layer_path(d) for d in built.layers]

    def find(inside: str) -> Path:
        return next(layer / inside for layer in reversed(layers) if os.path.lexists(layer / inside))

    main = find("opt/app/main.sh")
    assert main.read_text() == "echo main\n" and stat.S_IMODE(main.stat().st_mode) == 0o755
    assert main.stat().st_uid == 0 and find("opt/app/lib/x.txt").read_text() == "x\n"
    assert find("srv/notes.txt").read_text() == "notes\n"
    assert find("srv/link-out").is_symlink()  # copied as a link, never the host file it names
    again = asyncio.run(builder.build(text, lambda line: None, context=ctx))
    assert again.steps_run == 0
    (ctx / "notes.txt").write_text("changed\n")
    changed = asyncio.run(builder.build(text, lambda line: None, context=ctx))
    assert changed.steps_run == 2  # the COPY and the RUN after it
    for source, message in (("../secret", "leaves the build context"), ("dir-out/secret", "through a symlink"),
                            ("missing", "not in the build context")):
        with pytest.raises(BuildError, match=message):
            asyncio.run(builder.build(f"FROM {registry}/tiny:1\nCOPY {source} /x\n", lambda line: None, context=ctx))
    with pytest.raises(BuildError, match="has no build context"):  # a build given no context
        _build(builder, f"FROM {registry}/tiny:1\nCOPY notes.txt /x\n")


def test_the_default_snapshot_is_the_sandbox_dockerfiles_base_stage() -> None:
    """images/sandbox/Dockerfile's `base` stage, built through runtime.rootfs.local_builder
    as `python -m runtime image build sandbox` builds it, is the default snapshot, layer for
    layer and config for config, from the cache: one image definition. (The whole image,
    pushed and run: tests/test_image_export.py.)"""
    from runtime.rootfs import DEFAULT_STAGE, DOCKERFILE, local_builder

    store, default = default_snapshot()
    lines: list[str] = []
    with local_builder(store, lines.append) as builder:
        base = asyncio.run(builder.build(DOCKERFILE.read_text(), lines.append, target=DEFAULT_STAGE))
    assert base.layers == default.layers and base.steps_run == 0, lines
    assert (base.user, base.workdir, base.env) == (default.user, default.workdir, default.env)


def _uid_of(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("Uid:"))


def test_two_builds_at_once_run_as_host_ids_of_their_own(tmp_path: Path, registry: str) -> None:
    """Each build of a runtime takes a fresh range from the host-wide list sandboxes use:
    two builds at once (e.g. two organizations') never share host uids, and what each
    step wrote still lands in the layer as canonical ids."""
    import json

    from runtime import uids
    from runtime.images.service import LocalImages
    from tests import procfs

    state = tmp_path / "state"
    images = LocalImages(SnapshotStore(state, layers_dir=tmp_path / "layers"), state)
    marks = [f"m{secrets.token_hex(4)}", f"m{secrets.token_hex(4)}"]
    logs: list[list[str]] = [[], []]

    async def both() -> list[object]:
        return await asyncio.gather(*(
            images.build(f"built-{mark}", f"FROM {registry}/tiny:1\nRUN echo {mark}; sleep 5; touch /by-{mark}\n",
                         logs[i].append) for i, mark in enumerate(marks)))

    seen: dict[str, int] = {}
    thread = threading.Thread(target=lambda: seen.update(done=len(asyncio.run(both()))))
    thread.start()
    deadline = time.monotonic() + 60
    while len(seen) < 2 and time.monotonic() < deadline and thread.is_alive():
        for pid in procfs.pids():
            line = procfs.cmdline(pid)
            for mark in marks:
                if f"echo {mark};".encode() in line and (uid := _uid_of(pid)) is not None:
                    seen[mark] = uid  # the step's shell, as root of its build's namespace
        time.sleep(0.1)
    thread.join(60)
    assert seen.get("done") == 2, logs
    first, second = seen[marks[0]], seen[marks[1]]
    assert first != second and abs(first - second) >= uids.RANGE_SIZE, seen
    recorded = {int(r["base"]): r["state"] for r in json.loads(uids.HOST_RANGES.read_text())["ranges"]}
    assert recorded.get(first) == recorded.get(second) == str(state), recorded
    for mark, log in zip(marks, logs, strict=True):
        assert f" ---> Steps run as host ids {seen[mark]}-{seen[mark] + uids.RANGE_SIZE - 1}" in log, log
        top = images.store.get(f"built-{mark}").layers[-1]
        made = os.lstat(images.store.layer_path(top) / f"by-{mark}")
        assert (made.st_uid, made.st_gid) == (0, 0)  # shifted back from the build's own range


def test_a_step_runs_in_a_cgroup_with_the_sandbox_cpu_and_memory_limits(tmp_path: Path, registry: str) -> None:
    """While the step runs, its processes are in a group of every controller whose cpu and
    memory limits are the sandbox limits (pids.max and the filter: the test above)."""
    from runtime.limits import Limits
    from tests import procfs

    backend = cgroups.detect()
    if isinstance(backend, cgroups.CgroupV2):
        files = {"cpu.max": "50000 100000", "memory.max": str(96 << 20)}
    elif isinstance(backend, cgroups.CgroupV1):
        files = {"cpu.cfs_quota_us": "50000", "cpu.cfs_period_us": "100000", "memory.limit_in_bytes": str(96 << 20)}
    else:
        pytest.skip("no writable cgroup hierarchy here")
    prefix = f"sbx-limits-{secrets.token_hex(3)}-"
    store = SnapshotStore(tmp_path / "state", layers_dir=tmp_path / "layers")
    builder = Builder(store, ImageImporter(store, tmp_path / "state" / "images"),
                      confinement=lambda: Confinement(backend, Limits(cpus=0.5, memory_mib=96), prefix))
    mark = secrets.token_hex(4)
    found: dict[str, str] = {}
    holding: set[Path] = set()
    thread = threading.Thread(target=lambda: _build(builder, f"FROM {registry}/tiny:1\nRUN echo {mark}; sleep 4\n"))
    thread.start()
    deadline = time.monotonic() + 60
    while not found and time.monotonic() < deadline and thread.is_alive():
        for parent in backend.parents_dirs():
            for group in parent.glob(f"{prefix}*"):
                try:
                    procs = [int(p) for p in (group / "cgroup.procs").read_text().split()]
                    if any(f"echo {mark};".encode() in procfs.cmdline(pid) for pid in procs):
                        holding.add(parent)
                        found.update({name: (group / name).read_text().strip()
                                      for name in files if (group / name).exists()})
                except OSError:
                    continue  # the group went with the step
        if holding != set(backend.parents_dirs()):
            found.clear()
        time.sleep(0.1)
    thread.join(60)
    assert found == files, found
    assert not [g for p in backend.parents_dirs() for g in p.glob(f"{prefix}*")]  # removed with the step
