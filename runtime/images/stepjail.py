"""The helper behind `runtime.images.steps.run_step` (reads a `Jail` as JSON on stdin).

It runs as host root, but only to set up mounts in a mount namespace of its own that
nothing shares: the step itself runs in a user namespace whose root is an unprivileged
host id. When it exits, its mounts go with its namespace."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from runtime.images import mounts
from runtime.images.steps import DEFAULT_PATH, ID_RANGE, Jail, Step

MOUNTS = Path("/tmp")
# The host's, bound read-only over the image's own for the step only (never in a layer):
# /etc/hosts, and the CA bundle, so that a step's pip or curl trusts what the host trusts
# (a TLS-inspecting proxy's CA included) while the image keeps its own bundle. Not the
# host's resolv.conf: a step's network is a sandbox's, whose resolver is its gateway
# (Jail.resolv_conf).
HOST_FILES = ("/etc/hosts", "/etc/ssl/certs/ca-certificates.crt")
RESOLV_CONF = "/etc/resolv.conf"


def _regular_in(root: Path, inside: str) -> bool:
    """Whether `inside` is a regular file under `root` reached without any symlink (the
    image's own file: bwrap binds over it only then)."""
    path = root
    for part in Path(inside).relative_to("/").parts:
        path = path / part
        if not os.path.lexists(path) or os.path.islink(path):
            return False
    return os.path.isfile(path)


def _etc_fd(root: Path) -> int | None:
    """The image's /etc as a directory descriptor, reached without following a symlink."""
    try:
        root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        return os.open("etc", os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=root_fd)
    except OSError:
        return None
    finally:
        os.close(root_fd)


def resolv_conf_mount_point(root: Path) -> bool:
    """An empty /etc/resolv.conf where the image has none (most images ship none: docker
    provides it at run time), for the step's own to be bound over. True: made here, to be
    removed after the step (remove_mount_point), so that it never lands in the layer."""
    etc = _etc_fd(root)
    if etc is None:
        return False
    try:
        fd = os.open("resolv.conf", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=etc)
    except OSError:
        return False  # there is one (the image's, bound over if regular), or /etc is not writable
    finally:
        os.close(etc)
    os.close(fd)
    return True


def remove_mount_point(root: Path) -> None:
    etc = _etc_fd(root)
    if etc is None:
        return
    try:
        st = os.stat("resolv.conf", dir_fd=etc, follow_symlinks=False)
        if st.st_size == 0 and stat.S_ISREG(st.st_mode):  # still the empty file made here
            os.unlink("resolv.conf", dir_fd=etc)
    except OSError:
        pass
    finally:
        os.close(etc)


def bwrap_argv(merged: Path, step: Step, seccomp_fd: int, resolv_conf: Path | None = None) -> list[str]:
    """`resolv_conf`: the step's network's, bound over the image's; None: no network."""
    argv = ["bwrap", "--seccomp", str(seccomp_fd), "--bind", str(merged), "/", "--proc", "/proc", "--dev", "/dev",
            "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--die-with-parent",
            "--hostname", "localhost",  # resolvable through any /etc/hosts
            "--new-session"]
    if resolv_conf is None:
        argv.append("--unshare-net")  # an empty network namespace: loopback only
    elif _regular_in(merged, RESOLV_CONF):
        argv += ["--ro-bind", str(resolv_conf), RESOLV_CONF]
    for name in HOST_FILES:
        if os.path.exists(name) and _regular_in(merged, name):
            argv += ["--ro-bind", name, name]
    if step.uid != 0:
        # Not root: a nested user namespace keeps the step's ids as they are (uid U inside
        # is U of the build's namespace, host base+U); it has no capabilities at all.
        argv += ["--unshare-user", "--uid", str(step.uid), "--gid", str(step.gid)]
    argv += ["--clearenv", "--chdir", step.workdir]
    env = {"PATH": DEFAULT_PATH, "HOME": "/root" if step.uid == 0 else "/", **step.env}
    for name, value in env.items():
        argv += ["--setenv", name, value]
    return [*argv, "--", *step.argv]


def main() -> int:
    data = json.loads(sys.stdin.read())
    jail = Jail(**{**data, "step": Step(**data["step"])})
    upper, scratch = Path(jail.upper), Path(jail.scratch)
    namespace = mounts.UserNamespace(jail.base, ID_RANGE)
    mounts.unshare_mounts()
    lowers: list[str] = []
    for index, layer in enumerate(jail.layers):
        target = scratch / f"l{index}"
        target.mkdir()
        mounts.idmapped_bind(Path(layer), target, namespace.fd)
        lowers.append(str(target))
    if not lowers:  # FROM scratch: an overlay needs one lower directory
        (scratch / "empty").mkdir()
        lowers.append(str(scratch / "empty"))
    os.chown(upper, jail.base, jail.base)
    work, merged = scratch / "work", scratch / "merged"
    work.mkdir()
    merged.mkdir()
    # The top layer first; the upper layer's whiteouts and opaque dirs are overlayfs' own
    # (trusted.overlay.*: the mount is made outside the build's user namespace).
    mounts.mount("overlay", merged, "overlay",
                 f"lowerdir={':'.join(reversed(lowers))},upperdir={upper},workdir={work}")
    # Then the merged tree onto a tmpfs of this namespace's own at /tmp (hiding the host's
    # here only): the step's uid can walk to it, whatever the modes of the state dirs.
    handle = mounts.mount_handle(merged)
    mounts.mount("tmpfs", MOUNTS, "tmpfs", "mode=0755,size=1m")
    root = MOUNTS / "root"
    root.mkdir()
    mounts.move_to(handle, root)
    os.close(handle)
    resolv_conf: Path | None = None
    made_mount_point = False
    if jail.resolv_conf is not None:
        # On this namespace's own tmpfs, beside the root: never a file of a layer.
        resolv_conf = MOUNTS / "resolv.conf"
        resolv_conf.write_text(jail.resolv_conf)
        resolv_conf.chmod(0o644)
        made_mount_point = resolv_conf_mount_point(root)
    step = jail.step
    os.chdir("/")
    sys.stdout.flush()
    try:
        result = subprocess.run(bwrap_argv(root, step, jail.seccomp_fd, resolv_conf), stdin=subprocess.DEVNULL,
                                pass_fds=(jail.seccomp_fd,),
                                preexec_fn=lambda: namespace.enter(step.uid, step.gid))
    except OSError as exc:
        print(f"cannot start the build step: {exc}", flush=True)
        return 125
    finally:
        if made_mount_point:
            remove_mount_point(root)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
