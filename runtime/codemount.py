"""How a sandbox reaches the daemon's code: at one fixed path of its own, /opt/sandbox-toolbox.

Inside every sandbox, all read-only:

    /opt/sandbox-toolbox/python     the interpreter's installation (the venv's base prefix)
    /opt/sandbox-toolbox/venv       the virtual environment: its lib/ (site-packages), a
                                    bin/python linking to the interpreter above and a
                                    pyvenv.cfg naming it, so Python finds its packages there
    /opt/sandbox-toolbox/lib/       this project's sandbox packages (PYTHONPATH)

The sandbox never names a host path, so it does not matter where the checkout or the
interpreter live: a checkout under /tmp behind 0755 directories, one in a 0700 directory,
a pyenv under a 0700 /root. bwrap mounts the sources before any sandbox code runs (as root,
or as our own uid in its user namespace); the sandbox uid only has to traverse the fixed
tree, which is root-owned and 0755.

A read-only bind of / cannot take a new mount point, so /opt becomes a tmpfs holding
read-only binds of the host's own /opt entries next to ours.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CODE_ROOT = "/opt/sandbox-toolbox"
PYTHON_INSIDE = f"{CODE_ROOT}/python"
VENV_INSIDE = f"{CODE_ROOT}/venv"
LIB_INSIDE = f"{CODE_ROOT}/lib"
# What a sandbox runs of this project: the daemon and the runtime's entry point.
SANDBOX_PACKAGES = ("toolbox", "runtime")
REPO_ROOT = Path(__file__).resolve().parent.parent
# The venv's pyvenv.cfg as seen inside: its `home` is the fixed interpreter, not the host's.
PYVENV_CFG = f"home = {PYTHON_INSIDE}/bin\ninclude-system-site-packages = false\n"
# Prefixes whose shared libraries the dynamic loader finds without help.
_SYSTEM_PREFIXES = (Path("/usr"), Path("/"))


@dataclass(frozen=True)
class Interpreter:
    """The host's interpreter environment a sandbox runs the daemon with."""

    base: Path  # the installation: bin/, lib/pythonX.Y (resolved, no symlinks)
    name: str  # the executable's file name in base/bin, e.g. python3.11
    venv: Path | None  # the virtual environment around it, if any

    @classmethod
    def of(cls, python: str) -> Interpreter:
        """Describe the environment of `python` (a venv's bin/python or a plain install)."""
        executable = Path(python).absolute()
        real = executable.resolve()
        venv = executable.parent.parent
        if (venv / "pyvenv.cfg").is_file():
            return cls(base=real.parent.parent, name=real.name, venv=venv)
        return cls(base=real.parent.parent, name=real.name, venv=None)

    @property
    def shared_libpython(self) -> bool:
        # A --enable-shared build (pyenv's default here) carries an absolute RUNPATH to the
        # host's base/lib; inside, libpython lives under the fixed path instead.
        if self.base in _SYSTEM_PREFIXES:
            return False
        return any((self.base / "lib").glob("libpython*.so*"))


@dataclass(frozen=True)
class CodeMount:
    argv: list[str]  # bwrap options that build the fixed tree
    python: str  # the interpreter to run, inside
    bin_dir: str  # where `python3` lives inside, for PATH
    env: dict[str, str]  # PYTHONPATH and, for a shared libpython, LD_LIBRARY_PATH


def _host_opt_entries(opt: Path = Path("/opt")) -> list[str]:
    """Recreate the host's /opt entries (except ours) on the sandbox's /opt tmpfs."""
    argv: list[str] = []
    try:
        entries = sorted(os.scandir(opt), key=lambda e: e.name)
    except OSError:
        return argv
    for entry in entries:
        inside = f"/opt/{entry.name}"
        if inside == CODE_ROOT:
            continue
        if entry.is_symlink():
            argv += ["--symlink", os.readlink(entry.path), inside]
        else:
            argv += ["--ro-bind-try", entry.path, inside]
    return argv


def _dirs(*paths: str) -> list[str]:
    argv: list[str] = []
    for path in paths:
        argv += ["--perms", "0755", "--dir", path]
    return argv


def code_mount(python: str, pyvenv_cfg: Path, repo_root: Path = REPO_ROOT) -> CodeMount:
    """The bwrap options that put `python`'s environment and this project's sandbox
    packages at CODE_ROOT; `pyvenv_cfg` is a host file holding PYVENV_CFG that the sandbox
    cannot write."""
    interp = Interpreter.of(python)
    argv = ["--perms", "0755", "--tmpfs", "/opt", *_host_opt_entries()]
    argv += _dirs(CODE_ROOT, LIB_INSIDE)
    argv += ["--ro-bind", str(interp.base), PYTHON_INSIDE]
    for name in SANDBOX_PACKAGES:
        argv += ["--ro-bind", str(repo_root / name), f"{LIB_INSIDE}/{name}"]
    real_python = f"{PYTHON_INSIDE}/bin/{interp.name}"
    if interp.venv is None:
        inside, bin_dir = real_python, f"{PYTHON_INSIDE}/bin"
    else:
        bin_dir = f"{VENV_INSIDE}/bin"
        argv += _dirs(VENV_INSIDE, bin_dir)
        argv += ["--ro-bind", str(interp.venv / "lib"), f"{VENV_INSIDE}/lib"]
        if (interp.venv / "lib64").is_symlink():
            argv += ["--symlink", "lib", f"{VENV_INSIDE}/lib64"]
        argv += ["--ro-bind", str(pyvenv_cfg), f"{VENV_INSIDE}/pyvenv.cfg"]
        # The names a venv has; python3 is what code-run and the interpreter look up.
        argv += ["--symlink", real_python, f"{bin_dir}/python"]
        for alias in sorted({"python3", interp.name} - {"python"}):
            argv += ["--symlink", "python", f"{bin_dir}/{alias}"]
        inside = f"{bin_dir}/python"
    env = {"PYTHONPATH": LIB_INSIDE}
    if interp.shared_libpython:
        env["LD_LIBRARY_PATH"] = f"{PYTHON_INSIDE}/lib"
    return CodeMount(argv=argv, python=inside, bin_dir=bin_dir, env=env)
