"""Run one build step (a Dockerfile RUN) with a sandbox's isolation, never as host root.

`run_step` is the interface the builder uses; the implementation here is the builder's
own until the runtime's launcher (issue 15) can run a step: a helper process
(`python -m runtime.images.stepjail`) in a mount namespace of its own

- makes a user namespace mapping ids 0..65535 to a host range (root inside = `base`),
- binds each lower layer idmapped through it (the layers keep their canonical ids),
- mounts an overlay of them with a fresh upper directory,
- runs the step under bubblewrap as root (or USER) of that namespace: its own pid, ipc and
  uts namespaces, a fresh /proc and /dev, the host's CA bundle read-only.

Everything the step writes lands in the upper directory, owned by the host range;
`publish.shift_ids` brings it back to canonical ids before the upper becomes a layer.
The step's network is never the host's: with the runtime's sandbox network it runs in a
slot of its own (runtime/images/stepnet.py: NAT egress, the sandbox rules, DNS through its
gateway), else in an empty network namespace, and the build log says which.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from runtime import cgroups, seccomp
from runtime.images.stepnet import NO_NETWORK, StepNet, StepNetworks
from runtime.limits import Limits

# The host id range of builds run directly (tests, benchmarks): far above the ranges
# runtime/uids.py hands out from 1_000_000 up. A runtime's builds each take a range of
# their own from the host-wide list instead (runtime/images/service.py).
BUILD_ID_BASE = 1_900_000_000
ID_RANGE = 65536
PROJECT = str(Path(__file__).resolve().parent.parent.parent)  # where `-m runtime...` imports from
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Step:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class Jail:
    """What the helper needs, as JSON on its stdin."""

    layers: list[str]  # bottom ... top
    upper: str
    scratch: str  # empty directory for the overlay's workdir and mount points
    base: int
    step: Step
    seccomp_fd: int  # the syscall filter, passed to bwrap
    # The step's own network's resolv.conf; None: no network (bwrap --unshare-net).
    resolv_conf: str | None = None


_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # The helper goes when the process that runs the build dies (even by SIGKILL), and
    # bwrap goes with the helper (--die-with-parent): no step outlives its build.
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass(frozen=True)
class Confinement:
    """What a sandbox gets beyond namespaces (runtime/manager.py does the same for its
    sandboxes): a cgroup with the sandbox limits, the sandbox syscall filter, and a
    sandbox's network (None: no network at all)."""

    backend: cgroups.Backend
    limits: Limits = field(default_factory=Limits)
    group_prefix: str = "sandbox-toolbox-build-"
    network: StepNetworks | None = None


async def run_step(layers: Sequence[Path], step: Step, upper: Path, scratch: Path,
                   log: Callable[[bytes], None], *, base: int = BUILD_ID_BASE,
                   timeout: float | None = None, confinement: Confinement | None = None) -> int:
    """Run `step` over `layers` with `upper` (an empty directory) as its writable layer,
    `scratch` (an empty directory on the same file system) for the overlay's own use; its
    output goes to `log` chunk by chunk as it comes. Returns the step's exit status."""
    confinement = confinement or Confinement(cgroups.Backend())
    if confinement.network is None:
        log(f"{NO_NETWORK}\n".encode())
        return await _run_step(layers, step, upper, scratch, log, base, timeout, confinement, None)
    async with confinement.network.step() as net:
        log(f"{net.note}\n".encode())
        return await _run_step(layers, step, upper, scratch, log, base, timeout, confinement, net)


async def _run_step(layers: Sequence[Path], step: Step, upper: Path, scratch: Path,
                    log: Callable[[bytes], None], base: int, timeout: float | None,
                    confinement: Confinement, net: StepNet | None) -> int:
    group = await asyncio.to_thread(confinement.backend.create,
                                    f"{confinement.group_prefix}{os.urandom(5).hex()}", confinement.limits)
    syscall_filter = await asyncio.to_thread(seccomp.filter_fd)
    jail = Jail([str(p) for p in layers], str(upper), str(scratch), base, step, syscall_filter,
                net.resolv_conf if net is not None else None)
    # nsenter execs the helper (no fork): the pid put in the cgroup below is the helper's.
    prefix = ["nsenter", f"--net={net.netns}", "--"] if net is not None else []
    try:
        process = await asyncio.create_subprocess_exec(
            *prefix, sys.executable, "-m", "runtime.images.stepjail", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
            cwd=PROJECT, preexec_fn=_die_with_parent, pass_fds=(syscall_filter,))
    finally:
        os.close(syscall_filter)
    assert process.stdin is not None and process.stdout is not None
    try:
        # Into the cgroup before it reads its orders, so everything it starts is inside.
        for procs in group.procs_files:
            await asyncio.to_thread(procs.write_text, f"{process.pid}\n")
        process.stdin.write(json.dumps(asdict(jail)).encode())
        await process.stdin.drain()
        process.stdin.close()

        async def pump() -> None:
            assert process.stdout is not None
            while chunk := await process.stdout.read(65536):
                log(chunk)

        await asyncio.wait_for(pump(), timeout)
        return await process.wait()
    finally:
        if process.returncode is None:
            # The helper's session: the helper and bwrap (the step itself dies with its pid
            # namespace when bwrap goes).
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await process.wait()
        await asyncio.to_thread(group.remove)  # kills whatever is left in it
