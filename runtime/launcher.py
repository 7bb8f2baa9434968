"""The interpreter launcher every sandbox runs the daemon through (x86-64 Linux).

A 680-byte static executable, no libc, assembled from `launcher_x86_64.S` next to this file
(`as --64 -o l.o launcher_x86_64.S && ld -static -nostdlib -N -s --build-id=none -o l l.o`;
tests/test_codemount.py rebuilds it when binutils are installed and compares). It runs

    /opt/sandbox-toolbox/so/ld.so --library-path /opt/sandbox-toolbox/so:/opt/sandbox-toolbox/python/lib
        --argv0 /opt/sandbox-toolbox/venv/bin/python /opt/sandbox-toolbox/interp ARGS...

so the host's interpreter starts on the host's own dynamic loader and libraries whatever
the sandbox's root holds (another glibc, musl, no libc at all), without LD_LIBRARY_PATH in
any environment a sandbox process inherits. Being static it needs nothing of the root
either, and as `sys.executable` (the `--argv0`) it is what the daemon's own child
interpreters (the language server) start through again.
"""

from __future__ import annotations

import platform

# Every path is a fixed one inside the sandbox (runtime/codemount.py), so the launcher is
# one constant file.
LOADER = "/opt/sandbox-toolbox/so/ld.so"
LIBRARY_PATH = "/opt/sandbox-toolbox/so:/opt/sandbox-toolbox/python/lib"
SELF = "/opt/sandbox-toolbox/venv/bin/python"
INTERP = "/opt/sandbox-toolbox/interp"

LAUNCHER_X86_64 = bytes.fromhex(
    "7f454c4602010100000000000000000002003e000100000078004000000000004000000000000000e801000000000000"
    "000000004000380001004000030002000100000007000000780000000000000078004000000000007800400000000000"
    "590100000000000059010000000000000100000000000000488b0c24488d742408488d54ce08488d410748c1e0034829"
    "c44883e4f0488d058700000048890424488d059a0000004889442408488d059d0000004889442410488d05c900000048"
    "89442418488d05c50000004889442420488d05de0000004889442428488d7c24304c8d46084885c97415498b00488907"
    "4983c0084883c70848ffc975edeb0748c70700000000488d3d160000004889e6b83b0000000f05bf7f000000b83c0000"
    "000f052f6f70742f73616e64626f782d746f6f6c626f782f736f2f6c642e736f002d2d6c6962726172792d7061746800"
    "2f6f70742f73616e64626f782d746f6f6c626f782f736f3a2f6f70742f73616e64626f782d746f6f6c626f782f707974"
    "686f6e2f6c6962002d2d6172677630002f6f70742f73616e64626f782d746f6f6c626f782f76656e762f62696e2f7079"
    "74686f6e002f6f70742f73616e64626f782d746f6f6c626f782f696e7465727000002e7368737472746162002e746578"
    "740000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000b0000000100000007000000000000007800400000000000"
    "780000000000000059010000000000000000000000000000010000000000000000000000000000000100000003000000"
    "00000000000000000000000000000000d101000000000000110000000000000000000000000000000100000000000000"
    "0000000000000000"
)


def launcher() -> bytes | None:
    """The launcher for this host's architecture; None where there is none (the daemon
    then runs on its interpreter directly, which needs the host's own root)."""
    return LAUNCHER_X86_64 if platform.machine() in ("x86_64", "AMD64") else None
