"""The daemon comes in from outside (runtime/codemount.py, runtime/launcher.py) and runs on
any root: the default snapshot, a musl root, a root with no libc at all; a root it cannot
serve is refused at create time with what is missing.

These run the real daemon under plain bwrap in a root of the test's own (an overlay of
the shared default snapshot, or a small tree), before the runtime launches sandboxes on
snapshots itself."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from runtime import launcher
from runtime.codemount import PYVENV_CFG, code_mount
from runtime.rootcheck import UnsupportedRoot, check_root, resolve_in_layers
from tests.helpers import REPO_ROOT
from tests.layer_helpers import daemon_in, default_snapshot, layer_checksum, overlay
from tests.system import requires

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts an overlay / binds as root")
needs_x86_64 = pytest.mark.skipif(launcher.launcher() is None, reason="the launcher is x86-64 only")
pytestmark = [requires("bwrap"), needs_x86_64]


def _execute(client: httpx.Client, command: str) -> tuple[int, str]:
    response = client.post("/process/execute", json={"command": command, "timeout": 30})
    assert response.status_code == 200, response.text
    return response.json()["exitCode"], response.json()["result"]


def test_the_launcher_is_its_source_assembled() -> None:
    """The embedded bytes are exactly what the checked-in assembly makes (with binutils)."""
    if not (shutil.which("as") and shutil.which("ld")):
        pytest.skip("binutils (as, ld) are not installed")
    source = Path(launcher.__file__).with_name("launcher_x86_64.S")
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"launcher-{os.getpid()}"
    work.mkdir(exist_ok=True)
    try:
        subprocess.run(["as", "--64", "-o", str(work / "l.o"), str(source)], check=True)
        subprocess.run(["ld", "-static", "-nostdlib", "-N", "-s", "--build-id=none", "--no-warn-rwx-segments",
                        "-o", str(work / "l"), str(work / "l.o")], check=True, capture_output=True)
        assert (work / "l").read_bytes() == launcher.LAUNCHER_X86_64
    finally:
        shutil.rmtree(work)


@needs_root
def test_daemon_runs_in_the_default_snapshot_and_leaves_its_layer_alone(tmp_path: Path) -> None:
    store, snapshot = default_snapshot()
    lower = store.lower_dirs(snapshot.layers)
    before = layer_checksum(lower[0])
    with overlay(lower, tmp_path / "root") as merged, daemon_in(merged, tmp_path) as client:
        code, out = _execute(client, "sh -c '. /etc/os-release; echo $VERSION_CODENAME; "
                                     "command -v python3; echo $(ls /opt/sandbox-toolbox); echo x > /usr/local/written; "
                                     "tr \"\\0\" \" \" < /proc/2/cmdline; echo; env'")
        assert code == 0, out
        lines = out.splitlines()
        assert lines[0] == "bookworm"
        assert lines[1] == "/usr/bin/python3", "user code gets the snapshot's python3"
        assert lines[2].split() == ["interp", "lib", "python", "so", "venv"]
        assert lines[3].startswith("/opt/sandbox-toolbox/so/ld.so --library-path ")
        assert lines[3].endswith(" -m runtime.entry ")
        # No host path in what the sandbox sees of its daemon (pid 2: pid 1 is bwrap, whose
        # arguments name its mount sources) or its environment.
        for host_path in (str(REPO_ROOT), sys.prefix, str(Path(sys.executable).resolve().parent.parent),
                          str(tmp_path), str(store.layers_dir)):
            assert host_path not in out, (host_path, out)
        assert "LD_LIBRARY_PATH" not in out
        assert "PYTHONPATH" not in out, "the daemon's PYTHONPATH reached a sandbox process"
        assert "RUNTIME_DAEMON_ONLY_ENV" not in out
        # The daemon's interpreter really runs on its own libc, the snapshot's python3 on
        # the snapshot's.
        code, out = _execute(client, "grep -c /opt/sandbox-toolbox/so/libc /proc/2/maps; "
                                     "python3 -c 'import ssl; print(ssl.OPENSSL_VERSION)'; "
                                     "python3 -c 'import toolbox' 2>&1 | tail -1")
        assert code == 0 and int(out.splitlines()[0]) > 0, out
        assert out.splitlines()[-1] == "ModuleNotFoundError: No module named 'toolbox'", out
        assert (merged / "usr/local/written").read_text() == "x\n"
        # The daemon's own child interpreter (the Python language server: sys.executable,
        # i.e. the launcher again) works in this root too.
        _execute(client, "printf 'import os\\nos.pa' > /tmp/a.py")
        lsp = {"languageId": "python", "pathToProject": "/tmp"}
        assert client.post("/lsp/start", json=lsp).status_code == 200
        document = {**lsp, "uri": "file:///tmp/a.py"}
        assert client.post("/lsp/did-open", json=document).status_code == 200
        completions = client.post("/lsp/completions", json={**document, "position": {"line": 1, "character": 5},
                                                             "context": {"triggerKind": 1}})
        assert completions.status_code == 200, completions.text
        assert "path" in {item["label"] for item in completions.json()["items"]}, completions.text
    assert (tmp_path / "root" / "upper" / "usr" / "local" / "written").exists()
    assert layer_checksum(lower[0]) == before, "the shared lower layer was modified"


def _busybox_root(root: Path) -> None:
    busybox = shutil.which("busybox")
    if busybox is None or subprocess.run(["ldd", busybox], capture_output=True).returncode == 0:
        pytest.skip("needs a static busybox (apt-get install busybox-static)")
    (root / "bin").mkdir(parents=True)
    shutil.copy(busybox, root / "bin" / "busybox")
    for applet in ("sh", "ls", "cat", "echo"):
        (root / "bin" / applet).symlink_to("busybox")


@needs_root
def test_daemon_runs_on_a_musl_root(tmp_path: Path) -> None:
    """A root whose only libc is musl (Alpine-like: musl's loader and libc, a static
    busybox as its shell): the daemon brings its own glibc and runs."""
    musl = Path("/usr/lib/x86_64-linux-musl/libc.so")
    if not musl.exists():
        pytest.skip("needs musl (apt-get install musl)")
    root = tmp_path / "musl"
    _busybox_root(root)
    (root / "lib").mkdir()
    shutil.copy(musl, root / "lib" / "ld-musl-x86_64.so.1")
    check_root([root])
    with daemon_in(root, tmp_path) as client:
        code, out = _execute(client, "sh -c 'ls /lib; echo ok'")
        assert code == 0 and out.split() == ["ld-musl-x86_64.so.1", "ok"], out
        assert client.get("/files", params={"path": "/lib"}).status_code == 200


@needs_root
def test_daemon_runs_on_a_root_without_libc_but_create_refuses_it(tmp_path: Path) -> None:
    root = tmp_path / "bare"
    root.mkdir()
    with pytest.raises(UnsupportedRoot, match="no /bin/sh"):
        check_root([root])
    # The daemon itself needs nothing of it.
    with daemon_in(root, tmp_path) as client:
        listing = client.get("/files", params={"path": "/"})
        assert listing.status_code == 200
        assert {entry["name"] for entry in listing.json()} >= {"opt", "proc", "dev", "tmp"}


def test_check_root_names_a_shell_of_another_architecture(tmp_path: Path) -> None:
    root = tmp_path / "arm"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    # An ELF header for aarch64 (e_machine 183).
    header = b"\x7fELF\x02\x01\x01" + b"\0" * 9 + (2).to_bytes(2, "little") + (183).to_bytes(2, "little")
    (root / "usr" / "bin" / "dash").write_bytes(header + b"\0" * 100)
    os.chmod(root / "usr" / "bin" / "dash", 0o755)
    (root / "usr" / "bin" / "sh").symlink_to("dash")
    with pytest.raises(UnsupportedRoot, match="built for aarch64"):
        check_root([root])
    os.chmod(root / "usr" / "bin" / "dash", 0o644)
    with pytest.raises(UnsupportedRoot, match="not an executable"):
        check_root([root])


def test_paths_resolve_through_layers_whiteouts_and_symlinks(tmp_path: Path) -> None:
    bottom, top = tmp_path / "bottom", tmp_path / "top"
    (bottom / "usr" / "bin").mkdir(parents=True)
    (bottom / "bin").symlink_to("usr/bin")
    (bottom / "usr" / "bin" / "sh").write_text("bottom sh")
    (bottom / "etc" / "old").mkdir(parents=True)
    (bottom / "etc" / "old" / "f").write_text("old")
    (top / "usr" / "bin").mkdir(parents=True)
    (top / "usr" / "bin" / "bash").write_text("top bash")
    layers = [top, bottom]
    assert resolve_in_layers(layers, "/bin/sh") == str(bottom / "usr" / "bin" / "sh")
    assert resolve_in_layers(layers, "/bin/bash") == str(top / "usr" / "bin" / "bash")
    assert resolve_in_layers(layers, "/usr/../etc/old/f") == str(bottom / "etc" / "old" / "f")
    # `..` after a symlink is taken from where it led (/bin -> /usr/bin: /bin/.. is /usr).
    assert resolve_in_layers(layers, "/bin/../etc/old/f") is None
    assert resolve_in_layers(layers, "/bin/../bin/sh") == str(bottom / "usr" / "bin" / "sh")
    assert resolve_in_layers(layers, "/nope") is None
    if os.geteuid() == 0:
        os.mknod(top / "usr" / "bin" / "sh", stat.S_IFCHR, os.makedev(0, 0))  # a whiteout
        assert resolve_in_layers(layers, "/bin/sh") is None
        (top / "etc").mkdir()
        os.setxattr(top / "etc", "trusted.overlay.opaque", b"y")  # hides the lower /etc
        assert resolve_in_layers(layers, "/etc/old/f") is None
    # A symlink loop ends.
    (top / "loop").symlink_to("loop")
    assert resolve_in_layers(layers, "/loop/x") is None


@needs_root
def test_an_interpreter_without_a_venv_runs_on_a_bare_root_too(tmp_path: Path) -> None:
    """A system python3 (no venv around it) gets the same launcher, with its own
    site-packages kept (include-system-site-packages)."""
    system_python = Path("/usr/bin/python3")
    if not system_python.exists() or Path(sys.executable).resolve() == system_python.resolve():
        pytest.skip("needs a /usr/bin/python3 other than the test's interpreter")
    root = tmp_path / "bare"
    root.mkdir()
    cfg = tmp_path / "pyvenv.cfg"
    cfg.write_text(PYVENV_CFG)
    code = code_mount(str(system_python), cfg, host_root=False)
    out = subprocess.run(["bwrap", "--bind", str(root), "/", "--proc", "/proc", "--dev", "/dev", *code.argv,
                          "--clearenv", "--", code.python, "-c",
                          "import sys, ssl, sqlite3; print(sys.executable); print(any('-packages' in p for p in sys.path))"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["/opt/sandbox-toolbox/venv/bin/python", "True"]
