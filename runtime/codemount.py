"""How a sandbox reaches the daemon's code: at one fixed path of its own, /opt/sandbox-toolbox.

Inside every sandbox, all read-only:

    /opt/sandbox-toolbox/python     the interpreter's installation (the venv's base prefix)
    /opt/sandbox-toolbox/interp     its executable
    /opt/sandbox-toolbox/so/        the host's dynamic loader (ld.so) and every shared
                                    library the interpreter, its lib-dynload and the venv's
                                    extension modules need, copied once per host state
    /opt/sandbox-toolbox/venv       the virtual environment: its lib/ (site-packages), a
                                    pyvenv.cfg naming the interpreter above and bin/python,
                                    the launcher (runtime/launcher.py) that starts `interp`
                                    on `so/ld.so` with `so/` as its library path
    /opt/sandbox-toolbox/lib/       this project's sandbox packages (PYTHONPATH)

So the daemon needs nothing of the sandbox's root file system: it runs the same on the
host's root, on a Debian snapshot with another glibc, on a musl root and on a root with no
libc at all, and no environment a sandbox process inherits carries LD_LIBRARY_PATH. User
code runs on the root's own `python3` (not on this one): `bin_dir` belongs on a sandbox's
PATH only where the sandbox sees the host's root.

The sandbox never names a host path, so it does not matter where the checkout or the
interpreter live: a checkout under /tmp behind 0755 directories, one in a 0700 directory,
a pyenv under a 0700 /root. bwrap mounts the sources before any sandbox code runs (as root,
or as our own uid in its user namespace); the sandbox uid only has to traverse the fixed
tree, which is 0755.

On the host's root (read-only, so no new mount point), /opt becomes a tmpfs holding
read-only binds of the host's own /opt entries next to ours; on a snapshot's root (its
own writable overlay) CODE_ROOT alone is a tmpfs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from runtime import launcher
from runtime.entry import DAEMON_ONLY_ENV
from runtime.private import owned_dir
from toolbox.options import env as env_option

CODE_ROOT = "/opt/sandbox-toolbox"
PYTHON_INSIDE = f"{CODE_ROOT}/python"
VENV_INSIDE = f"{CODE_ROOT}/venv"
LIB_INSIDE = f"{CODE_ROOT}/lib"
SO_INSIDE = f"{CODE_ROOT}/so"
INTERP_INSIDE = f"{CODE_ROOT}/interp"
# What a sandbox runs of this project: the daemon and the runtime's entry point.
SANDBOX_PACKAGES = ("toolbox", "runtime")
REPO_ROOT = Path(__file__).resolve().parent.parent
# The venv's pyvenv.cfg as seen inside: its `home` is the fixed interpreter, not the host's.
PYVENV_CFG = f"home = {PYTHON_INSIDE}/bin\ninclude-system-site-packages = false\n"
# Where the launcher and the copied libraries are kept (0700, ours).
CACHE_ENV = "RUNTIME_CODE_CACHE"
# Prefixes whose shared libraries the dynamic loader finds without help.
_SYSTEM_PREFIXES = (Path("/usr"), Path("/"))
_LDD_LINE = re.compile(r"^\s*(\S+)\s+=>\s+(/\S+)\s+\(0x[0-9a-f]+\)$")
_LDD_LOADER = re.compile(r"^\s*(/\S*ld-linux\S*)\s+\(0x[0-9a-f]+\)$")
_DLOPENED = ("libgcc_s.so.1", "libnss_files.so.2", "libnss_dns.so.2", "libnss_compat.so.2")


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
    def executable(self) -> Path:
        return self.base / "bin" / self.name

    @property
    def shared_libpython(self) -> bool:
        # A --enable-shared build (pyenv's default here) carries an absolute RUNPATH to the
        # host's base/lib; inside, libpython lives under the fixed path instead.
        if self.base in _SYSTEM_PREFIXES:
            return False
        return any((self.base / "lib").glob("libpython*.so*"))

    def elf_files(self) -> list[Path]:
        """The interpreter and every shared object it may load from its own trees."""
        found = [self.executable]
        found += sorted((self.base / "lib").glob("libpython*.so*"))
        stdlib = self.base / "lib" / self.name  # lib/python3.11
        found += sorted((stdlib / "lib-dynload").glob("*.so"))
        if self.venv is not None:
            for root, _dirs, files in os.walk(self.venv / "lib"):
                found += [Path(root) / f for f in sorted(files) if ".so" in f and _is_elf(Path(root) / f)]
        return [p for p in found if p.is_file()]

    def owns(self, path: Path) -> bool:
        """A library inside the trees the sandbox gets anyway (found there by RUNPATH
        $ORIGIN or the launcher's library path)."""
        trees = [self.base] + ([self.venv.resolve()] if self.venv else [])
        real = path.resolve()
        return any(real.is_relative_to(t) for t in trees if t not in _SYSTEM_PREFIXES)


@dataclass(frozen=True)
class CodeMount:
    argv: list[str]  # bwrap options that build the fixed tree
    python: str  # the interpreter to run, inside (one executable path)
    bin_dir: str  # where that `python3` lives inside, for PATH on the host's root only
    env: dict[str, str]  # PYTHONPATH (daemon-only on a snapshot root; LD_LIBRARY_PATH without a launcher)


def _is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def cache_dir() -> Path:
    configured = env_option(CACHE_ENV)
    if configured:
        return owned_dir(Path(configured), "the daemon's libraries")
    base = env_option("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return owned_dir(Path(base) / "sandbox-toolbox", "the daemon's libraries")


def _stat_key(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        st = path.stat()
        h.update(f"{path}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def host_libraries(interp: Interpreter, cache: Path) -> dict[str, Path]:
    """{name the loader asks for: host file} for every library the interpreter's ELF files
    need from the host's system directories, plus "ld.so": the dynamic loader. ldd runs
    once per state of those files (the answer is cached in `cache`)."""
    elves = interp.elf_files()
    record = cache / f"deps-{_stat_key(elves)}.json"
    try:
        return {k: Path(v) for k, v in json.loads(record.read_bytes()).items()}
    except (OSError, ValueError):
        pass
    libs: dict[str, Path] = {}
    for start in range(0, len(elves), 200):
        out = subprocess.run(["ldd", *map(str, elves[start:start + 200])], capture_output=True, text=True,
                             env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"}, check=False).stdout
        for line in out.splitlines():
            if match := _LDD_LINE.match(line):
                name, found = match.group(1), Path(match.group(2))
                if not interp.owns(found):
                    libs.setdefault(name, found)
            elif match := _LDD_LOADER.match(line):
                libs.setdefault("ld.so", Path(match.group(1)))
    # What glibc itself loads by name at run time (NSS for user and host lookups, libgcc_s
    # for thread cancellation): from the host too, next to its libc.
    if "libc.so.6" in libs:
        for name in _DLOPENED:
            candidate = libs["libc.so.6"].parent / name
            if candidate.exists():
                libs.setdefault(name, candidate)
    if "ld.so" not in libs:
        raise RuntimeError(f"cannot find the dynamic loader of {interp.executable} (ldd found none): "
                           "the daemon needs a dynamically linked glibc interpreter on the host")
    tmp = record.with_name(f".{record.name}.{os.getpid()}")
    tmp.write_text(json.dumps({k: str(v) for k, v in libs.items()}))
    os.replace(tmp, record)
    return libs


def library_dir(libs: dict[str, Path], cache: Path) -> Path:
    """A directory of copies of `libs` (the loader as ld.so), made once per state of the
    host's files: an upgrade of the host's libc makes a new one, never a mixed one."""
    files = sorted(libs.items())
    key = _stat_key([path for _, path in files])
    h = hashlib.sha256((key + json.dumps([(n, str(p)) for n, p in files])).encode()).hexdigest()[:20]
    target = cache / f"so-{h}"
    if target.is_dir():
        return target
    tmp = cache / f".so-{h}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o755)
    for name, path in files:
        shutil.copyfile(path, tmp / name)
        os.chmod(tmp / name, 0o755)
    try:
        os.rename(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another runtime made it first
        if not target.is_dir():
            raise
    return target


def _launcher_file(cache: Path, code: bytes) -> Path:
    path = cache / f"launcher-{hashlib.sha256(code).hexdigest()[:16]}"
    if not path.is_file():
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_bytes(code)
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
    return path


@dataclass(frozen=True)
class Prepared:
    """What the host keeps for the launcher: the launcher itself and the library copies."""

    launcher: Path
    so_dir: Path
    system_cfg: Path  # pyvenv.cfg for an interpreter without a venv


@functools.lru_cache(maxsize=8)
def prepare(python: str) -> Prepared | None:
    """The launcher and the host libraries for `python`, computed once per process (and
    cached on disk across processes); None where this architecture has no launcher."""
    code = launcher.launcher()
    if code is None:
        return None
    interp = Interpreter.of(python)
    cache = cache_dir()
    so_dir = library_dir(host_libraries(interp, cache), cache)
    system_cfg = cache / "pyvenv-system.cfg"
    if not system_cfg.is_file():
        tmp = system_cfg.with_name(f".{system_cfg.name}.{os.getpid()}")
        tmp.write_text(f"home = {PYTHON_INSIDE}/bin\ninclude-system-site-packages = true\n")
        os.replace(tmp, system_cfg)
    return Prepared(launcher=_launcher_file(cache, code), so_dir=so_dir, system_cfg=system_cfg)


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


def code_mount(python: str, pyvenv_cfg: Path, repo_root: Path = REPO_ROOT, host_root: bool = True) -> CodeMount:
    """The bwrap options that put `python`'s environment and this project's sandbox
    packages at CODE_ROOT; `pyvenv_cfg` is a host file holding PYVENV_CFG that the sandbox
    cannot write. `host_root`: the sandbox's / is the host's (read-only) rather than a
    snapshot's own root."""
    interp = Interpreter.of(python)
    if host_root:
        argv = ["--perms", "0755", "--tmpfs", "/opt", *_host_opt_entries()]
        argv += _dirs(CODE_ROOT)
    else:
        argv = ["--perms", "0755", "--tmpfs", CODE_ROOT]
    argv += _dirs(LIB_INSIDE)
    argv += ["--ro-bind", str(interp.base), PYTHON_INSIDE]
    for name in SANDBOX_PACKAGES:
        argv += ["--ro-bind", str(repo_root / name), f"{LIB_INSIDE}/{name}"]
    env = {"PYTHONPATH": LIB_INSIDE}
    if not host_root:
        # The snapshot's python3 is the user's: the daemon drops PYTHONPATH at start
        # (runtime/entry.py) so no sandbox process imports our packages by accident.
        env[DAEMON_ONLY_ENV] = "PYTHONPATH"
    prepared = prepare(python)
    if prepared is None:
        return _direct(interp, pyvenv_cfg, argv, env)
    bin_dir = f"{VENV_INSIDE}/bin"
    argv += _dirs(VENV_INSIDE, bin_dir)
    if interp.venv is not None:
        argv += ["--ro-bind", str(interp.venv / "lib"), f"{VENV_INSIDE}/lib"]
        if (interp.venv / "lib64").is_symlink():
            argv += ["--symlink", "lib", f"{VENV_INSIDE}/lib64"]
        argv += ["--ro-bind", str(pyvenv_cfg), f"{VENV_INSIDE}/pyvenv.cfg"]
    else:
        argv += ["--ro-bind", str(prepared.system_cfg), f"{VENV_INSIDE}/pyvenv.cfg"]
    argv += ["--ro-bind", str(prepared.so_dir), SO_INSIDE,
             "--ro-bind", str(interp.executable), INTERP_INSIDE,
             "--ro-bind", str(prepared.launcher), f"{bin_dir}/python"]
    # The names a venv has; python3 is what code-run and the interpreter look up.
    for alias in sorted({"python3", interp.name} - {"python"}):
        argv += ["--symlink", "python", f"{bin_dir}/{alias}"]
    return CodeMount(argv=argv, python=f"{bin_dir}/python", bin_dir=bin_dir, env=env)


def is_daemon(cmdline: list[bytes], module: bytes = b"runtime.entry") -> bool:
    """Whether a process's /proc/PID/cmdline (split on NUL) is the daemon's own, started
    through the launcher or directly, and not the bwrap or setpriv processes whose
    arguments name it too."""
    if cmdline[:1] == [launcher.LOADER.encode()]:
        return cmdline[6:8] == [b"-m", module]  # ld.so --library-path P --argv0 A interp -m ...
    return cmdline[1:3] == [b"-m", module]


def _direct(interp: Interpreter, pyvenv_cfg: Path, argv: list[str], env: dict[str, str]) -> CodeMount:
    """No launcher for this architecture: the interpreter runs as it is, on the libraries
    of the root it sees (so only on the host's root)."""
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
        argv += ["--symlink", real_python, f"{bin_dir}/python"]
        for alias in sorted({"python3", interp.name} - {"python"}):
            argv += ["--symlink", "python", f"{bin_dir}/{alias}"]
        inside = f"{bin_dir}/python"
    if interp.shared_libpython:
        env["LD_LIBRARY_PATH"] = f"{PYTHON_INSIDE}/lib"
    return CodeMount(argv=argv, python=inside, bin_dir=bin_dir, env=env)
