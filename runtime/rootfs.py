"""The default snapshot: the `base` stage of images/sandbox/Dockerfile, built here once.

The image the project ships (compose, Kubernetes) and the local runtime's default snapshot
are one definition. Building it takes two parts, both as host root:

1. `ensure_base`: `debian:bookworm-slim` made locally, since no registry but Debian's
   mirror is assumed reachable: `debootstrap --variant=minbase bookworm`, then in a chroot
   what Debian's slim image has (no docs, man pages or translations from dpkg, apt's lists
   and caches removed, no host resolver or machine id). A fresh temporary tree on the
   layers' file system (LAYERS/.tmp-*, inside the 0700 layers dir: no sandbox can reach
   it); each step in a mount and pid namespace of its own, so a crash leaves no /proc
   mounted, and the half-built tree is removed by the next build.
2. `ensure_default`: the Dockerfile's `base` stage on it, by the image builder
   (runtime/images/builder.py): each RUN in a build sandbox, on a sandbox network of its own
   (`local_builder`), never as host root and never on the host's network.

Both are cached by their recipe's hash in LAYERS/.builds, under a lock, so every later
start (and every other state dir on the same layers dir) reuses them and two starts never
build twice. The image builds of `python -m runtime image` share the same cache: the
sandbox image's `base` stage is the default snapshot's layers.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from runtime import cgroups, uids
from runtime.images.builder import Base, Builder, BuildError, Built, plan
from runtime.images.oci import ImageConfig, ImageImporter
from runtime.images.stepnet import StepNetworks
from runtime.images.steps import DEFAULT_PATH, Confinement
from runtime.network import Network, NetworkError
from runtime.snapshots import DEFAULT, LAYERS_ENV, Progress, Snapshot, SnapshotError, SnapshotStore, remove_tree

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO_ROOT / "images" / "sandbox" / "Dockerfile"
DEFAULT_STAGE = "base"  # the Dockerfile's stage the default snapshot is
BASE_IMAGE = "debian:bookworm-slim"  # what its FROM names, made here by ensure_base
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
MIRROR_ENV = "RUNTIME_DEBIAN_MIRROR"  # a local mirror or proxy, e.g. http://apt-cacher:3142/debian
# Bumped when a recipe changes meaning, so a cached build of the old one is not reused.
RECIPE_VERSION = 2
BASE_CONFIG = ImageConfig(env={"PATH": DEFAULT_PATH}, cmd=["bash"])  # as Docker's debian images

# What runs in the chroot after debootstrap: Debian's slim image (docker-debian-artifacts'
# dpkg and apt settings). Services never start in a build (policy-rc.d).
_BASE_SETUP = r"""
set -eu
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 PATH=/usr/sbin:/usr/bin:/sbin:/bin
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod 0755 /usr/sbin/policy-rc.d
echo "deb {mirror} {suite} main" > /etc/apt/sources.list
cat > /etc/dpkg/dpkg.cfg.d/docker <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
DPKG
echo 'Acquire::Languages "none";' > /etc/apt/apt.conf.d/docker-no-languages
echo 'Acquire::GzipIndexes "true";' > /etc/apt/apt.conf.d/docker-gzip-indexes
echo 'Apt::AutoRemove::SuggestsImportant "false";' > /etc/apt/apt.conf.d/docker-autoremove-suggests
find /usr/share/doc -depth -type f ! -name copyright -delete
find /usr/share/doc -depth -empty -delete
rm -rf /usr/share/man/* /usr/share/groff/* /usr/share/info/* /usr/share/lintian/* /usr/share/locale/*
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' > /etc/hosts
# The host's resolver and identity do not belong in an image; the runtime provides them.
: > /etc/resolv.conf
: > /etc/machine-id
rm -f /etc/hostname
echo "step: clean"
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/debconf/*-old /var/log/apt/* \
       /var/log/dpkg.log /var/log/alternatives.log /root/.cache /tmp/* /var/tmp/*
rm -f /usr/sbin/policy-rc.d
"""

# Every step here: its own mount namespace (what it mounts goes with it) and pid namespace,
# whose init dies with unshare, which dies with us (PR_SET_PDEATHSIG both), so a runtime
# killed mid-build leaves no step writing into a tree the next start removes.
_ISOLATED = ("setpriv", "--pdeathsig", "KILL",
             "unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child=SIGKILL")
_DEBOOTSTRAP_NOISE = re.compile(r"^I: (Retrieving|Validating|Extracting|Unpacking|Configuring) \S+( \S+)?$")
# The builder's log lines worth showing on a first start; the rest (apt's) only on failure.
_SHOWN = re.compile(r"^(Step \d+/\d+ :|Built |Using |\[build step|E: |dpkg: error)|newly installed")


def mirror() -> str:
    return os.environ.get(MIRROR_ENV) or DEFAULT_MIRROR


def _hash(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def base_key() -> str:
    recipe = {"version": RECIPE_VERSION, "suite": SUITE, "mirror": mirror(), "script": _BASE_SETUP}
    return f"base-{SUITE}-{_hash(recipe)}"


def build_key() -> str:
    """The default snapshot's build: its base and the Dockerfile's `base` stage as written."""
    stage = [instruction.text for instruction in plan(DOCKERFILE.read_text(), target=DEFAULT_STAGE)]
    return f"{DEFAULT}-{_hash({'version': RECIPE_VERSION, 'base': base_key(), 'stage': stage})}"


def _check_tools(what: str) -> None:
    missing = [tool for tool in ("debootstrap", "chroot", "unshare", "setpriv", "nft")
               if shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin") is None]
    if missing:
        raise SnapshotError(f"building {what} needs {', '.join(missing)} "
                            "(apt-get install debootstrap util-linux coreutils nftables)")
    if os.geteuid() != 0:
        raise SnapshotError(f"building {what} needs root (debootstrap, build sandboxes); run the runtime "
                            f"as root once, or point {LAYERS_ENV} at a layers dir holding a built one")


def ensure_base(store: SnapshotStore, progress: Progress) -> Base:
    """`debian:bookworm-slim`, made here (or taken from the layers dir's cache)."""
    key = base_key()
    with store.build_lock(key):
        layers = store.cached_build(key)
        if layers is None:
            _check_tools(BASE_IMAGE)
            layers = (_debootstrap(store, progress),)
            store.record_build(key, layers)
    return Base(f"local:{BASE_IMAGE}:{layers[0]}", layers, BASE_CONFIG)


def _debootstrap(store: SnapshotStore, progress: Progress) -> str:
    store.clean_partial()
    tree = store.new_tree()
    started = time.monotonic()
    try:
        progress(f"{BASE_IMAGE}: debootstrap --variant=minbase {SUITE} from {mirror()} (first start only)")
        _run([*_ISOLATED, "--", "debootstrap", "--variant=minbase", SUITE, str(tree), mirror()],
             progress, "debootstrap", lambda line: not _DEBOOTSTRAP_NOISE.match(line), what=BASE_IMAGE)
        script = _BASE_SETUP.format(mirror=mirror(), suite=SUITE)
        _run([*_ISOLATED, f"--mount-proc={tree / 'proc'}", "--", "chroot", str(tree), "/bin/sh", "-c", script],
             progress, "slim", lambda line: line.startswith("step:"), what=BASE_IMAGE)
        digest = store.publish_layer(tree)
    except BaseException:
        remove_tree(tree)
        raise
    progress(f"{BASE_IMAGE}: made in {time.monotonic() - started:.1f} s "
             f"({store.layer_size(digest) / 1e6:.0f} MB), layer {digest[:12]}")
    return digest


@contextlib.contextmanager
def local_builder(store: SnapshotStore, progress: Progress) -> Iterator[Builder]:
    """A builder for the project's own images outside a runtime: FROM debian:bookworm-slim
    is `ensure_base`'s; RUN steps run in build sandboxes with the sandbox limits, each on a
    sandbox network of a temporary one of this process (NAT egress, no host service), and
    as a host id range of their own, taken as a sandbox's is."""
    base = ensure_base(store, progress)
    names = {BASE_IMAGE, f"library/{BASE_IMAGE}", f"docker.io/library/{BASE_IMAGE}"}
    importer = ImageImporter(store, store.layers_dir / ".image-configs")
    # Its state (nftables table names, dnsmasq files) in the store's private state dir,
    # never anywhere a sandbox writes.
    state = Path(tempfile.mkdtemp(prefix=".build-network-", dir=store.state_root))
    net = Network(state)
    try:
        try:
            net.open()
        except NetworkError as exc:
            raise SnapshotError(f"build steps need a sandbox network: {exc.message}") from None
        try:
            confinement = Confinement(cgroups.detect(), network=StepNetworks(net))
            yield Builder(store, importer, snapshots=lambda name: base if name in names else None,
                          confinement=lambda: confinement,
                          id_ranges=lambda: uids.sandbox_range(store.state_root))
        finally:
            net.close()
    finally:
        shutil.rmtree(state, ignore_errors=True)


def default_snapshot(store: SnapshotStore, layers: tuple[str, ...], config: dict[str, object]) -> Snapshot:
    env = config.get("env")
    return store.snapshot_of(DEFAULT, layers, user=str(config.get("user") or "root"),
                             env=dict(env) if isinstance(env, dict) else {},
                             workdir=str(config.get("workdir") or "/"))


def ensure_default(store: SnapshotStore, progress: Progress) -> Snapshot:
    """The store's `default` snapshot; built (or taken from the layers dir's cache) first."""
    key = build_key()
    try:
        current = store.get(DEFAULT)
        if current.layers == store.cached_build(key):
            return current
    except KeyError:
        pass
    with store.build_lock(key):
        layers, config = store.cached_build(key), store.cached_config(key)
        if layers is None or config is None:
            built = _build_default(store, progress)
            layers = built.layers
            config = {"user": built.user, "env": built.env, "workdir": built.workdir}
            store.record_build(key, layers, config=config)
        snapshot = default_snapshot(store, layers, config)
        store.put(snapshot)
        return snapshot


def _build_default(store: SnapshotStore, progress: Progress) -> Built:
    _check_tools("the default snapshot")
    where = DOCKERFILE.relative_to(REPO_ROOT)
    started = time.monotonic()
    tail: collections.deque[str] = collections.deque(maxlen=15)

    def log(line: str) -> None:
        tail.append(line)
        if _SHOWN.search(line):
            progress(f"  {line}")

    store.clean_partial()
    try:
        with local_builder(store, lambda line: progress(f"default snapshot: {line}")) as builder:
            progress(f"default snapshot: the {DEFAULT_STAGE} stage of {where} (first start only)")
            try:
                with store.holding():
                    built = asyncio.run(builder.build(DOCKERFILE.read_text(), log, target=DEFAULT_STAGE))
            except BuildError as exc:
                raise SnapshotError(f"building the {DEFAULT_STAGE} stage of {where} failed: {exc}; "
                                    f"its last lines: {' | '.join(tail)}") from None
    except SnapshotError as exc:
        raise SnapshotError(f"the default snapshot: {exc}") from None
    progress(f"default snapshot: built in {time.monotonic() - started:.1f} s ({built.size / 1e6:.0f} MB, "
             f"{len(built.layers)} layers)")
    return built


def _run(argv: Sequence[str], progress: Progress, stage: str, shown: Callable[[str], bool],
         what: str = "the default snapshot") -> None:
    """Run one build step, passing its interesting lines to `progress`; on failure, a
    SnapshotError with the step's last lines."""
    tail: collections.deque[str] = collections.deque(maxlen=15)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                          text=True, errors="replace", env=env, start_new_session=True) as process:
        assert process.stdout is not None
        try:
            for raw in process.stdout:
                line = raw.rstrip()
                if not line:
                    continue
                tail.append(line)
                if shown(line):
                    progress(f"  {stage}: {line}")
            code = process.wait()
        except BaseException:
            # The whole step (debootstrap's dpkg, apt's children) before its tree is removed.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
    if code != 0:
        # One line: the step's errors (apt's and debootstrap's "E:" lines), else its last line.
        errors = [line for line in tail if line.startswith(("E:", "dpkg: error"))] or list(tail)[-1:]
        raise SnapshotError(f"building {what} failed in {stage} (exit {code}): "
                            f"{'; '.join(errors) or 'no output'}")


# ---- a snapshot layered on another: one more layer, from a script run in its root --------

_HOST_CA = "/etc/ssl/certs/ca-certificates.crt"
_LAYER_SETUP = r"""
set -eu
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 PATH=/usr/sbin:/usr/bin:/sbin:/bin
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod 0755 /usr/sbin/policy-rc.d
{script}
rm -f /usr/sbin/policy-rc.d
"""
_CLEAN = ("apt-get clean; rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt/* /var/log/dpkg.log "
          "/var/log/alternatives.log /root/.cache")


def apt_script(packages: Sequence[str]) -> str:
    """The script that adds Debian `packages` (no recommends) and leaves no apt lists."""
    names = " ".join(packages)
    return (f"echo 'step: apt-get install {names}'\napt-get update -qq\n"
            f"apt-get install -y -q --no-install-recommends -o Dpkg::Use-Pty=0 {names}\n{_CLEAN}\n")


def ensure_layered(store: SnapshotStore, name: str, base: Snapshot, script: str, progress: Progress) -> Snapshot:
    """Snapshot `name`: `base`'s layers plus one made by running `script` (sh, as root) in
    an overlay of them, cached by (base layers, script) like the default snapshot. The new
    layer is the overlay's upper directory, so it is in overlayfs format as it stands
    (deletions are whiteouts) and the base's layers are never written."""
    encoded = json.dumps({"base": list(base.layers), "script": script}, sort_keys=True).encode()
    key = f"layer-{hashlib.sha256(encoded).hexdigest()[:16]}"
    with store.build_lock(key):
        layers = store.cached_build(key)
        if layers is None:
            layers = (*base.layers, _build_layer(store, name, base, script, progress))
            store.record_build(key, layers)
        snapshot = store.snapshot_of(name, layers, user=base.user, env=dict(base.env), workdir=base.workdir,
                                     entrypoint=base.entrypoint, cmd=base.cmd)
        store.put(snapshot)
        return snapshot


def _build_layer(store: SnapshotStore, name: str, base: Snapshot, script: str, progress: Progress) -> str:
    if os.geteuid() != 0:
        raise SnapshotError(f"building snapshot {name!r} needs root (an overlay mount and chroot)")
    store.clean_partial()
    lower = ":".join(map(str, store.lower_dirs(base.layers)))
    upper, scratch = store.new_tree(), store.new_tree()
    work, merged = scratch / "work", scratch / "merged"
    work.mkdir()
    merged.mkdir()
    started = time.monotonic()
    # Everything mounted here lives in the step's own mount namespace and goes with it. The
    # step uses the host's resolver and trusted CAs (a host behind a TLS-intercepting proxy
    # trusts its CA; pip needs that), bound over the snapshot's files, never copied in.
    inner = (f"mount -t overlay overlay -o lowerdir={lower},upperdir={upper},workdir={work} {merged} && "
             f"mount -t proc proc {merged}/proc && "
             f"{{ [ -e {merged}/etc/resolv.conf ] || touch {merged}/etc/resolv.conf; }} && "
             f"mount --bind /etc/resolv.conf {merged}/etc/resolv.conf && "
             f"{{ ! [ -f {_HOST_CA} ] || ! [ -f {merged}{_HOST_CA} ] || mount --bind {_HOST_CA} {merged}{_HOST_CA}; }} && "
             f"exec chroot {merged} /bin/sh -c \"$0\"")
    try:
        progress(f"snapshot {name}: building a layer on {base.name}")
        _run([*_ISOLATED, "--", "/bin/sh", "-c", inner, _LAYER_SETUP.format(script=script)],
             progress, "its script", lambda line: line.startswith("step:") or "newly installed" in line,
             what=f"snapshot {name!r}")
        digest = store.publish_layer(upper)
    except BaseException:
        remove_tree(upper)
        raise
    finally:
        remove_tree(scratch)
    progress(f"snapshot {name}: layer built in {time.monotonic() - started:.1f} s "
             f"({store.layer_size(digest) / 1e6:.0f} MB)")
    return digest
