"""Start a sandbox whose `/` is its own: an overlay of its snapshot's layers and its disk.

Run as root on the host (`python -I -c ... CONFIG`, CONFIG a JSON object that
`runtime.ownroot.launcher_argv` writes), inside the sandbox's cgroup and, for NAT egress,
its network namespace. bubblewrap is not used: it always sets no_new_privs, under which a
setuid `sudo` gains nothing, and a sandbox must be a computer whose root can install
packages. The steps:

1. As host root, in a mount namespace of our own (nothing reaches the host's mount table;
   it all goes when the sandbox's last process exits): make the sandbox's user namespace
   (a full 65536-id map onto its own host range), mount its disk image (ext4 on a loop
   device, autoclear), the snapshot's layers ID-mapped onto the range (so root:root files
   of the shared layer look root-owned inside without being copied or changed) and the
   overlay (layers + the disk's upper/work). Open, still as host root, what must come in
   from the host: the daemon's code, the device nodes, volumes (already O_PATH fds).
2. Join the user namespace as its root, unshare mount, pid, ipc, uts, cgroup (and the
   network when the sandbox has loopback only) namespaces; fork pid 1.
3. pid 1 (dies with us: PDEATHSIG) makes the overlay its root (pivot_root), and from then
   on only resolves paths inside it: fresh /proc, a minimal /dev, /tmp, the code at
   /opt/sandbox-toolbox (read-only), volumes, hostname and /etc/hosts, resolv.conf.
   It loads the syscall filter as root of the user namespace (no no_new_privs needed),
   forks the daemon in a new session as the sandbox's user (uid 1000 inside, no
   capabilities left) and reaps orphans until the daemon exits.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import struct
import subprocess
import sys
from typing import Any

from runtime import linux

# The device nodes a sandbox gets, bound from the host's (as bwrap's --dev does).
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
             "stderr": "/proc/self/fd/2", "core": "/proc/kcore", "ptmx": "pts/ptmx"}


def fail(message: str) -> None:
    sys.stderr.write(f"launcher: {message}\n")
    sys.stderr.flush()
    os._exit(111)


# ---- step 1: as host root ------------------------------------------------------------------

def make_userns(uid_map: str, gid_map: str) -> int:
    """An fd of a new user namespace with these maps ("inside outside count" lines)."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        os.close(go_w)
        try:
            linux.unshare(linux.CLONE_NEWUSER)
            os.write(ready_w, b"1")
        finally:
            os.read(go_r, 1)
            os._exit(0)
    os.close(ready_w)
    os.close(go_r)
    try:
        if os.read(ready_r, 1) != b"1":
            raise OSError(errno.EPERM, "could not create a user namespace")
        for name, lines in (("uid_map", uid_map), ("gid_map", gid_map)):
            with open(f"/proc/{pid}/{name}", "w") as f:
                f.write(lines)
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(go_w)
        os.close(ready_r)
        os.waitpid(pid, 0)


def mount_disk(image: str, where: str, base: int) -> None:
    """The sandbox's ext4 image at `where`; its upper/ and work/ for the overlay. `discard`
    punches holes in the sparse image when the sandbox deletes files."""
    # util-linux mount sets up the loop device with autoclear: it goes with the last mount.
    result = subprocess.run(["mount", "-t", "ext4", "-o", "loop,discard,nosuid,nodev,noatime", image, where],
                            capture_output=True, text=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    if result.returncode != 0:
        fail(f"cannot mount the sandbox's disk {image}: {result.stderr.strip()}")
    upper = os.path.join(where, "upper")
    if not os.path.isdir(upper):
        os.mkdir(upper, 0o755)
        os.chown(upper, base, base)  # the overlay's root directory: root inside
        lost = os.path.join(where, "lost+found")
        if os.path.isdir(lost):
            os.rmdir(lost)
    if not os.path.isdir(os.path.join(where, "work")):
        os.mkdir(os.path.join(where, "work"), 0o700)


def mount_root(cfg: dict[str, Any], userns: int) -> str:
    staging = cfg["staging"]
    linux.mount("tmpfs", staging, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=0700")
    disk = os.path.join(staging, "disk")
    os.mkdir(disk)
    mount_disk(cfg["disk"], disk, cfg["id_base"])
    lowers = []
    for index, layer in enumerate(reversed(cfg["layers"])):  # overlay wants top first
        point = os.path.join(staging, f"l{index}")
        os.mkdir(point)
        fd = linux.open_tree(layer)
        try:
            linux.mount_setattr(fd, linux.MOUNT_ATTR_IDMAP | linux.MOUNT_ATTR_RDONLY
                                | linux.MOUNT_ATTR_NODEV, userns_fd=userns)
            linux.move_mount(fd, point)
        finally:
            os.close(fd)
        lowers.append(point)
    root = os.path.join(staging, "root")
    os.mkdir(root)
    # Paths relative to the staging dir: the options show in the sandbox's mountinfo, and
    # must not name the host's state dir.
    os.chdir(staging)
    options = (f"lowerdir={':'.join(os.path.basename(p) for p in lowers)},"
               "upperdir=disk/upper,workdir=disk/work")
    linux.mount("overlay", "root", "overlay", linux.MS_NODEV, options)
    return root


def open_host_trees(cfg: dict[str, Any]) -> tuple[list[tuple[int, str, bool]], dict[str, int]]:
    """Detached copies of the code's and the devices' host mounts, made while we can still
    read every host path (a pyenv under a 0700 /root): attached inside later."""
    code = []
    for source, target, read_only in cfg["binds"]:
        code.append((linux.open_tree(source), target, read_only))
    devices = {name: linux.open_tree(f"/dev/{name}") for name in DEVICES}
    return code, devices


def volume_gid_map(base: int, count: int, first: int, gids: list[int]) -> str:
    """The gid map of the volumes' ID-mapped mounts: ids on disk are ids inside (so every
    sandbox's daytona is 1000 there), except each volume's shared gid (900000+, see
    runtime/volumes.py), which appears as group `first`+i inside, a group the sandbox's
    user is in."""
    lines = [f"0 {base} {first}"]
    lines += [f"{gid} {base + first + i} 1" for i, gid in enumerate(gids)]
    rest = first + len(gids)
    lines.append(f"{rest} {base + rest} {count - rest}")
    return "".join(line + "\n" for line in lines)


def open_volumes(cfg: dict[str, Any]) -> list[tuple[int, str, bool]]:
    """ID-mapped, mountable copies of the volumes' directories, which the runtime opened
    O_PATH one component at a time without following symlinks (runtime/volumes.py)."""
    if not cfg["volumes"]:
        return []
    base, count = cfg["id_base"], cfg["id_count"]
    idmap = make_userns(f"0 {base} {count}\n",
                        volume_gid_map(base, count, cfg["volume_group_first"], cfg["volume_gids"]))
    volumes = []
    try:
        for fd, target, read_only in cfg["volumes"]:
            tree = linux.open_tree("", dirfd=fd)
            os.close(fd)
            linux.mount_setattr(tree, linux.MOUNT_ATTR_IDMAP | linux.MOUNT_ATTR_NODEV
                                | (linux.MOUNT_ATTR_RDONLY if read_only else 0), userns_fd=idmap)
            volumes.append((tree, target, False))
    finally:
        os.close(idmap)
    return volumes


# ---- step 3: pid 1, inside ------------------------------------------------------------------

def makedirs(path: str, mode: int = 0o755) -> None:
    try:
        os.makedirs(path, mode, exist_ok=True)
    except FileExistsError:  # a file or a dangling symlink in its place: the sandbox's own doing
        fail(f"{path} exists and is not a directory")


def touch(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    os.close(fd)


def attach(fd: int, target: str, read_only: bool) -> None:
    linux.move_mount(fd, target)
    os.close(fd)
    if read_only:
        linux.mount_setattr(linux.AT_FDCWD, linux.MOUNT_ATTR_RDONLY, path=target, recursive=True)


def setup_dev(devices: dict[str, int]) -> None:
    makedirs("/dev")
    linux.mount("tmpfs", "/dev", "tmpfs", linux.MS_NOSUID | linux.MS_NOEXEC, "mode=0755")
    for name, fd in devices.items():
        touch(f"/dev/{name}")
        attach(fd, f"/dev/{name}", read_only=False)
    for name, target in DEV_LINKS.items():
        os.symlink(target, f"/dev/{name}")
    os.mkdir("/dev/pts", 0o755)
    linux.mount("devpts", "/dev/pts", "devpts", linux.MS_NOSUID | linux.MS_NOEXEC,
                "newinstance,ptmxmode=0666,mode=620,gid=5")
    os.mkdir("/dev/shm")
    # POSIX semaphores (multiprocessing.Lock) need a sticky world-writable /dev/shm.
    linux.mount("tmpfs", "/dev/shm", "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=1777")


def setup_code(code: list[tuple[int, str, bool]], cfg: dict[str, Any]) -> None:
    """The daemon's code at its fixed path: a tmpfs of read-only binds, read-only itself."""
    top = cfg["code_root"]
    makedirs(top)
    linux.mount("tmpfs", top, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=0755")
    for path in cfg["code_dirs"]:
        makedirs(path)
    for fd, target, read_only in code:
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            makedirs(target)
        else:
            touch(target)
        attach(fd, target, read_only)
    for link_target, path in cfg["code_symlinks"]:
        os.symlink(link_target, path)
    linux.mount_setattr(linux.AT_FDCWD, linux.MOUNT_ATTR_RDONLY, path=top)


def write_etc(cfg: dict[str, Any]) -> None:
    """Files of the sandbox's own /etc that must match this start (its name, its resolver).
    Written as root inside, after pivot_root: they cannot reach anything of the host."""
    makedirs("/etc")
    for name, text in cfg["etc"].items():
        path = f"/etc/{name}"
        if os.path.islink(path):
            os.unlink(path)  # e.g. resolv.conf -> a systemd-resolved file that is not there
        with open(path, "w") as f:
            f.write(text)


def bring_up_loopback() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        import fcntl
        siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, siocgifflags, ifreq))[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH14x", b"lo", flags | iff_up))


def pid1(cfg: dict[str, Any], proc: int, code: list[tuple[int, str, bool]],
         devices: dict[str, int], volumes: list[tuple[int, str, bool]], seccomp_program: bytes) -> None:
    # The overlay here is a locked copy, which pivot_root refuses: put a bind of it of our
    # own on top. By descriptor: the path to it crosses host directories that root inside
    # (an id the host does not know as root) may not traverse.
    # The launcher left us in it (unshare moved our cwd into this namespace's copy).
    own = linux.open_tree(".", recursive=True)
    linux.move_mount(own, ".")
    os.fchdir(own)
    os.close(own)
    linux.pivot_root(".", ".")
    linux.umount(".", linux.MNT_DETACH)
    os.chdir("/")
    # From here on every path is the sandbox's own.
    makedirs("/proc")
    attach(proc, "/proc", read_only=False)
    setup_dev(devices)
    makedirs("/tmp")
    linux.mount("tmpfs", "/tmp", "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=1777")
    setup_code(code, cfg)
    # Shortest target first, so a nested volume is mounted on top of its parent.
    for fd, target, read_only in sorted(volumes, key=lambda v: v[1].count("/")):
        makedirs(target)
        attach(fd, target, read_only)
    socket.sethostname(cfg["hostname"])
    write_etc(cfg)
    if cfg["own_network"]:
        bring_up_loopback()
    linux.load_seccomp(seccomp_program)
    daemon = os.fork()
    if daemon == 0:
        run_daemon(cfg)
    reap(daemon)


def run_daemon(cfg: dict[str, Any]) -> None:
    try:
        os.setsid()
        uid, gid = cfg["uid"], cfg["gid"]
        os.setgroups([gid, *cfg["groups"]])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)  # a non-zero uid: every capability is gone
        os.chdir(cfg["cwd"])
        os.execve(cfg["argv"][0], cfg["argv"], cfg["env"])
    except OSError as exc:
        fail(f"cannot start {cfg['argv'][0]}: {exc}")


def reap(daemon: int) -> None:
    """pid 1's job: collect every orphan; leave with the daemon's status."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: os.kill(daemon, signum))
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            os._exit(0)
        except InterruptedError:
            continue
        if pid == daemon:
            os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


# ---- the whole launch -----------------------------------------------------------------------

def main(argv: list[str]) -> None:
    cfg = json.loads(argv[1])
    # Die with the runtime (bwrap's --die-with-parent): a runtime killed with SIGKILL
    # leaves no sandbox behind. Our parent is the runtime itself (the cgroup prefix and
    # nsenter exec, they do not fork); if it is gone already, we were reparented.
    linux.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != cfg["parent"]:
        fail("the runtime exited before the sandbox started")
    try:
        # First: the volumes' descriptors name mounts of the host's namespace.
        volumes = open_volumes(cfg)
        linux.unshare(linux.CLONE_NEWNS)
        linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
        whole = f"0 {cfg['id_base']} {cfg['id_count']}\n"
        userns = make_userns(whole, whole)
        os.chdir(mount_root(cfg, userns))
        code, devices = open_host_trees(cfg)
        with open(cfg["seccomp_fd"], "rb") as f:
            seccomp_program = f.read()
        linux.setns(userns, linux.CLONE_NEWUSER)
        os.close(userns)
        os.setgroups([])
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
        # A change of credentials clears the parent-death signal: set it again.
        linux.set_pdeathsig(signal.SIGKILL)
        if os.getppid() != cfg["parent"]:
            fail("the runtime exited before the sandbox started")
        flags = (linux.CLONE_NEWNS | linux.CLONE_NEWPID | linux.CLONE_NEWIPC | linux.CLONE_NEWUTS
                 | linux.CLONE_NEWCGROUP | (linux.CLONE_NEWNET if cfg["own_network"] else 0))
        linux.unshare(flags)
    except OSError as exc:
        fail(f"cannot set the sandbox up: {exc}")
    child = os.fork()
    if child == 0:
        try:
            # (Had we died before this, the runtime's kill of our process group, which
            # pid 1 is still in, takes it too.)
            linux.set_pdeathsig(signal.SIGKILL)
            # A detached proc of the new pid namespace, made while a full /proc is still
            # visible (the kernel refuses a new proc where none is).
            proc = linux.fs_mount("proc", {}, linux.MOUNT_ATTR_NOSUID | linux.MOUNT_ATTR_NODEV
                                  | linux.MOUNT_ATTR_NOEXEC)
            pid1(cfg, proc, code, devices, volumes, seccomp_program)
        except OSError as exc:
            fail(f"cannot set the sandbox's root up: {exc}")
        os._exit(1)
    for fd, _target, _ro in code + volumes:
        os.close(fd)
    for fd in devices.values():
        os.close(fd)
    # The runtime waits for us: we leave with the sandbox (and it dies with us).
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: os.kill(child, signal.SIGKILL))
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except InterruptedError:
            continue
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


if __name__ == "__main__":
    main(sys.argv)
