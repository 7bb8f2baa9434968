"""The sandbox's syscall filter: a deny list modelled on Docker's default seccomp profile.

bwrap loads the compiled filter (`--seccomp FD`) after it has set up the namespaces and
mounts and just before it runs the sandbox's first program, so the sandbox can never
undo it (no_new_privs is set, and the filter is inherited by every child).

Denied calls fail with EPERM (clone3 with ENOSYS, so glibc falls back to clone, whose
flags a filter can see). Everything not listed is allowed: python, git, pip, threads,
PTYs, ptrace inside the sandbox's own pid namespace. System calls of other ABIs (i386,
x32) kill the process, as libseccomp does for architectures a filter does not name.
The profile is described in docs/runtime.md ("Syscall filter").
"""

from __future__ import annotations

import errno
import logging
import os
import threading

log = logging.getLogger("runtime.seccomp")

# (system call, why a sandbox must not make it)
DENIED: tuple[tuple[str, str], ...] = (
    # Kernel keyrings are not namespaced: keys outlive the sandbox and are shared by uid.
    ("add_key", "keyring"), ("keyctl", "keyring"), ("request_key", "keyring"),
    # Large, often-exploited kernel surfaces a workload does not need.
    ("io_uring_setup", "io_uring"), ("io_uring_enter", "io_uring"), ("io_uring_register", "io_uring"),
    ("bpf", "eBPF"), ("perf_event_open", "perf events"), ("userfaultfd", "userfaultfd"),
    # Kernel modules, kexec, reboot, swap, clock, accounting, quotas.
    ("init_module", "kernel modules"), ("finit_module", "kernel modules"),
    ("delete_module", "kernel modules"), ("create_module", "kernel modules"),
    ("query_module", "kernel modules"), ("get_kernel_syms", "kernel modules"),
    ("kexec_load", "kexec"), ("kexec_file_load", "kexec"), ("reboot", "reboot"),
    ("swapon", "swap"), ("swapoff", "swap"), ("acct", "process accounting"),
    ("quotactl", "quotas"), ("quotactl_fd", "quotas"),
    ("settimeofday", "host clock"), ("clock_settime", "host clock"), ("clock_adjtime", "host clock"),
    ("adjtimex", "host clock"), ("stime", "host clock"),
    # The mount family: all mounts were made by bwrap before the filter applies.
    ("mount", "mounts"), ("umount", "mounts"), ("umount2", "mounts"), ("pivot_root", "mounts"),
    ("fsopen", "mounts"), ("fsconfig", "mounts"), ("fsmount", "mounts"), ("fspick", "mounts"),
    ("move_mount", "mounts"), ("open_tree", "mounts"), ("mount_setattr", "mounts"),
    # New namespaces (user namespaces above all) re-open what the sandbox dropped.
    ("unshare", "namespaces"), ("setns", "namespaces"),
    # File handles bypass path permissions; the rest are obsolete or host-wide.
    ("open_by_handle_at", "file handles"), ("name_to_handle_at", "file handles"),
    ("lookup_dcookie", "obsolete"), ("nfsservctl", "obsolete"), ("uselib", "obsolete"),
    ("ustat", "obsolete"), ("sysfs", "obsolete"), ("_sysctl", "obsolete"),
    ("vm86", "obsolete"), ("vm86old", "obsolete"), ("iopl", "I/O ports"), ("ioperm", "I/O ports"),
    ("kcmp", "kernel pointers"), ("mbind", "NUMA policy"), ("set_mempolicy", "NUMA policy"),
    ("move_pages", "NUMA policy"), ("migrate_pages", "NUMA policy"),
)
# clone() flags that create namespaces; clone3 hides its flags in memory, so it is refused
# with ENOSYS (glibc then uses clone).
CLONE_NAMESPACE_FLAGS = (0x00020000, 0x04000000, 0x08000000, 0x10000000, 0x20000000,
                         0x40000000, 0x02000000, 0x00000080)  # NEWNS UTS IPC USER PID NET CGROUP TIME

_compiled: bytes | None = None
_lock = threading.Lock()


def compile_filter() -> bytes:
    """The BPF program (cached: it is the same for every sandbox)."""
    global _compiled
    with _lock:
        if _compiled is None:
            _compiled = _build()
        return _compiled


def _build() -> bytes:
    import pyseccomp as seccomp

    flt = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    unknown = []
    for name, _why in DENIED:
        try:
            flt.add_rule(seccomp.ERRNO(errno.EPERM), name)
        except (OSError, ValueError, RuntimeError):
            unknown.append(name)  # not a call on this architecture (vm86 on x86_64, ...)
    for flag in CLONE_NAMESPACE_FLAGS:
        flt.add_rule(seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    flt.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    if unknown:
        log.debug("seccomp: not on this architecture: %s", ", ".join(unknown))
    with os.fdopen(os.memfd_create("seccomp-export", os.MFD_CLOEXEC), "w+b") as out:
        flt.export_bpf(out)
        out.seek(0)
        return out.read()


def filter_fd() -> int:
    """A fresh descriptor holding the compiled filter, for bwrap's `--seccomp FD` (bwrap
    reads it to the end, so every launch needs its own). The caller closes it."""
    program = compile_filter()
    fd = os.memfd_create("sandbox-seccomp", os.MFD_CLOEXEC)
    os.write(fd, program)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
