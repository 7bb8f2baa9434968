"""Die with the parent: a child that must not outlive the process that started it.

`python -m runtime up` starts the proxy as a child; if the runtime is SIGKILLed (OOM
killer, power button) nothing would stop the proxy, which keeps the port and blocks the
next start. The child asks the kernel itself (no `preexec_fn`, which is unsafe with
threads) to send it a signal when its parent exits.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int, sig: int = signal.SIGTERM) -> None:
    """Have the kernel send `sig` when the parent exits; exit now if `parent_pid` is already
    gone (it died before we asked, so we were re-parented)."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:
        print(f"exiting: the parent process {parent_pid} is gone", file=sys.stderr, flush=True)
        raise SystemExit(1)
