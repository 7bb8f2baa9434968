"""The default snapshot: a Debian bookworm root built here with debootstrap, once.

Two steps, both as host root, in a fresh temporary tree on the layers' file system
(LAYERS/.tmp-*, inside the 0700 layers dir: no sandbox can reach or write it):

1. `debootstrap --variant=minbase bookworm` from Debian's mirror;
2. in a chroot: the packages a Daytona sandbox is expected to have (no recommends), the
   `daytona` user (uid/gid 1000, passwordless sudo), hostname and locale basics, apt's
   lists and caches removed.

Each runs in a mount (and, for the chroot, pid) namespace of its own, so a crash leaves
no /proc mounted in the tree; the half-built tree is never published and is removed by
the next build. The finished tree becomes one layer and the `default` snapshot. The build
is cached by its recipe's hash in LAYERS/.builds, under a lock, so every later start (and
every other state dir on the same layers dir) reuses it and two starts never build twice.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence

from runtime.snapshots import DEFAULT, LAYERS_ENV, Progress, Snapshot, SnapshotError, SnapshotStore, remove_tree

SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
MIRROR_ENV = "RUNTIME_DEBIAN_MIRROR"  # a local mirror or proxy, e.g. http://apt-cacher:3142/debian
PACKAGES = ("python3", "python3-pip", "python3-venv", "git", "nodejs", "npm", "curl",
            "ca-certificates", "sudo")
USER, UID, HOME = "daytona", 1000, "/home/daytona"
HOSTNAME = "sandbox"
ENV = {"LANG": "C.UTF-8"}
# Bumped when the script below changes meaning, so a cached build of the old recipe is
# not reused.
RECIPE_VERSION = 1

# What runs in the chroot after debootstrap. Services never start in a build (policy-rc.d).
_SETUP = r"""
set -eu
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 PATH=/usr/sbin:/usr/bin:/sbin:/bin
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod 0755 /usr/sbin/policy-rc.d
echo "deb {mirror} {suite} main" > /etc/apt/sources.list
echo "step: apt-get update"
apt-get update -qq
echo "step: apt-get install {packages}"
apt-get install -y -q --no-install-recommends -o Dpkg::Use-Pty=0 {packages}
echo "step: user {user}"
groupadd --gid {uid} {user}
useradd --uid {uid} --gid {uid} --create-home --home-dir {home} --shell /bin/bash {user}
echo '{user} ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/{user}
chmod 0440 /etc/sudoers.d/{user}
echo {hostname} > /etc/hostname
printf '127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n' > /etc/hosts
echo 'LANG=C.UTF-8' > /etc/default/locale
# The host's resolver and identity do not belong in a snapshot; the runtime provides them.
: > /etc/resolv.conf
: > /etc/machine-id
echo "step: clean"
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/debconf/*-old /var/log/apt/* \
       /var/log/dpkg.log /var/log/alternatives.log /root/.cache /tmp/* /var/tmp/*
rm -f /usr/sbin/policy-rc.d
"""

# Every build step: its own mount namespace (what it mounts goes with it) and pid namespace,
# whose init dies with unshare, which dies with us (PR_SET_PDEATHSIG both), so a runtime
# killed mid-build leaves no step writing into a tree the next start removes.
_ISOLATED = ("setpriv", "--pdeathsig", "KILL",
             "unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child=SIGKILL")
_DEBOOTSTRAP_NOISE = re.compile(r"^I: (Retrieving|Validating|Extracting|Unpacking|Configuring) \S+$")


def mirror() -> str:
    return os.environ.get(MIRROR_ENV) or DEFAULT_MIRROR


def recipe() -> dict[str, object]:
    return {"version": RECIPE_VERSION, "suite": SUITE, "mirror": mirror(), "packages": list(PACKAGES),
            "user": USER, "uid": UID, "hostname": HOSTNAME, "script": _SETUP}


def build_key() -> str:
    encoded = json.dumps(recipe(), sort_keys=True).encode()
    return f"{DEFAULT}-{hashlib.sha256(encoded).hexdigest()[:16]}"


def default_snapshot(store: SnapshotStore, layers: tuple[str, ...]) -> Snapshot:
    return store.snapshot_of(DEFAULT, layers, user=USER, env=dict(ENV), workdir=HOME)


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
        layers = store.cached_build(key)
        if layers is None:
            layers = (_build(store, progress),)
            store.record_build(key, layers)
        snapshot = default_snapshot(store, layers)
        store.put(snapshot)
        return snapshot


def _build(store: SnapshotStore, progress: Progress) -> str:
    missing = [tool for tool in ("debootstrap", "chroot", "unshare", "setpriv") if shutil.which(tool) is None]
    if missing:
        raise SnapshotError(f"building the default snapshot needs {', '.join(missing)} "
                            "(apt-get install debootstrap util-linux coreutils)")
    if os.geteuid() != 0:
        raise SnapshotError("building the default snapshot needs root (debootstrap); run the runtime as "
                            f"root once, or point {LAYERS_ENV} at a layers dir holding a built one")
    store.clean_partial()
    tree = store.new_tree()
    started = time.monotonic()
    try:
        progress(f"default snapshot: debootstrap --variant=minbase {SUITE} from {mirror()} (first start only)")
        _run([*_ISOLATED, "--", "debootstrap", "--variant=minbase", SUITE, str(tree), mirror()],
             progress, "debootstrap", lambda line: not _DEBOOTSTRAP_NOISE.match(line))
        stage1 = time.monotonic() - started
        progress(f"default snapshot: base system in {stage1:.1f} s; adding {' '.join(PACKAGES)}")
        script = _SETUP.format(mirror=mirror(), suite=SUITE, packages=" ".join(PACKAGES), user=USER,
                               uid=UID, home=HOME, hostname=HOSTNAME)
        _run([*_ISOLATED, f"--mount-proc={tree / 'proc'}", "--", "chroot", str(tree), "/bin/sh", "-c", script],
             progress, "packages", lambda line: line.startswith("step:") or "newly installed" in line)
        progress(f"default snapshot: packages in {time.monotonic() - started - stage1:.1f} s; publishing")
        digest = store.publish_layer(tree)
    except BaseException:
        remove_tree(tree)
        raise
    progress(f"default snapshot: built in {time.monotonic() - started:.1f} s "
             f"({store.layer_size(digest) / 1e6:.0f} MB), layer {digest[:12]}")
    return digest


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
