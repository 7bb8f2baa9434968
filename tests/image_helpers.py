"""A real local OCI registry (Debian's docker-registry, the reference distribution server)
on 127.0.0.1, and images made locally and pushed into it with umoci and skopeo."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.helpers import free_port
from tests.proxy_helpers import stop

# Host programs copied (with their libraries) into a tiny root file system of our own:
# enough for RUN steps to do shell work, without debootstrap's minutes.
TOOLS = ("sh", "ls", "cat", "id", "touch", "mkdir", "rm", "env", "echo", "printf", "sleep", "test", "wc",
         "head", "grep", "chmod", "ln", "cp", "stat", "true", "false", "uname")


def _serving(process: subprocess.Popen[bytes], url: str, timeout: float) -> bool:
    """Wait until `url` answers (True), or the process exits or `timeout` passes (False)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return True
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.1)


@contextmanager
def local_registry(root: Path) -> Iterator[str]:
    """A registry on 127.0.0.1:free port with storage under `root`; yields `127.0.0.1:PORT`."""
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {root / 'storage'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n")
    with open(root / "registry.log", "wb") as log:
        process = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=log)
    try:
        if not _serving(process, f"http://127.0.0.1:{port}/v2/", 20):
            raise RuntimeError(f"registry did not start: {(root / 'registry.log').read_text()}")
        yield f"127.0.0.1:{port}"
    finally:
        stop(process)


@contextmanager
def registry_with_image(work: Path, name: str, make_rootfs: Callable[[Path], Path],
                        env: dict[str, str] | None = None) -> Iterator[str]:
    """`local_registry` under `work` holding one image, `name` (e.g. "tiny:1"), of the root
    file system `make_rootfs(dir)` builds; yields the registry's `127.0.0.1:PORT`."""
    with local_registry(work / "registry") as address:
        push_rootfs(make_rootfs(work / "rootfs"), work, f"{address}/{name}", env=env)
        yield address


def tiny_rootfs(dest: Path, tools: tuple[str, ...] = TOOLS) -> Path:
    """A root file system of the host's own programs and their libraries (usr-merged)."""
    for name in ("usr/bin", "tmp", "dev", "proc", "etc", "root", "home"):
        (dest / name).mkdir(parents=True, exist_ok=True)
    os.chmod(dest / "tmp", 0o1777)
    for link, target in (("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64"), ("sbin", "usr/bin")):
        if not (dest / link).is_symlink():
            os.symlink(target, dest / link)
    for tool in tools:
        found = shutil.which(tool, path="/usr/bin:/bin")
        if found is None:
            continue
        program = Path(found).resolve()
        shutil.copy2(program, dest / "usr/bin" / tool)
        out = subprocess.run(["ldd", str(program)], capture_output=True, text=True).stdout
        for lib in {w for w in out.split() if w.startswith("/")}:
            real = Path(lib).resolve()
            inside = Path(lib)
            parts = inside.parts[1:]
            if parts[0] in ("lib", "lib64"):
                inside = Path("/usr", *parts)
            copy_to = dest / inside.relative_to("/")
            copy_to.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(real, copy_to)
    (dest / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\ndaytona:x:1000:1000::/home/daytona:/bin/sh\n")
    (dest / "etc/group").write_text("root:x:0:\ndaytona:x:1000:\n")
    return dest


def python_rootfs(dest: Path) -> Path:
    """`tiny_rootfs` plus the host's Debian python3 with pip (`python -m pip` works, as the
    SDK's `pip_install` runs it), its standard library and its shared libraries."""
    tiny_rootfs(dest, (*TOOLS, "python3.11"))
    shutil.copytree("/usr/lib/python3.11", dest / "usr/lib/python3.11", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "test", "EXTERNALLY-MANAGED"))
    dist = dest / "usr/lib/python3/dist-packages"
    dist.mkdir(parents=True, exist_ok=True)
    for entry in Path("/usr/lib/python3/dist-packages").glob("pip*"):
        shutil.copytree(entry, dist / entry.name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("python3", "python"):
        os.symlink("python3.11", dest / "usr/bin" / name)
    # Python's own extension modules' libraries (ssl, ffi, ...), found as ldd finds them.
    for module in (dest / "usr/lib/python3.11/lib-dynload").glob("*.so"):
        out = subprocess.run(["ldd", str(module)], capture_output=True, text=True).stdout
        for lib in {w for w in out.split() if w.startswith("/")}:
            parts = Path(lib).parts[1:]
            inside = Path("/usr", *parts) if parts[0] in ("lib", "lib64") else Path(lib)
            copy_to = dest / inside.relative_to("/")
            if not copy_to.exists():
                copy_to.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(lib).resolve(), copy_to)
    (dest / "etc/ssl/certs").mkdir(parents=True, exist_ok=True)
    return dest


def tiny_wheel(directory: Path, name: str, version: str, value: str) -> Path:
    """A pure-Python wheel of a one-module package (`import name; name.VALUE`), written by
    hand: building one with pip would need an index to fetch its build backend from."""
    import base64
    import hashlib
    import zipfile

    files = {
        f"{name}/__init__.py": f"VALUE = {value!r}\n",
        f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{name}-{version}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\n"
                                             "Tag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{name}-{version}.dist-info/RECORD,,")
    files[f"{name}-{version}.dist-info/RECORD"] = "\n".join(record) + "\n"
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


@contextmanager
def package_index(directory: Path, netns: str | None = None, address: str = "127.0.0.1") -> Iterator[str]:
    """`python -m http.server` over a directory of wheels (pip's --find-links) on 127.0.0.1,
    or, for build steps (which never reach the host's loopback), on `address` inside the
    network namespace `netns` (the fake internet of tests/net_helpers.py)."""
    import sys

    # A namespace of the test's own has no other listener: a fixed port there is free.
    port = free_port() if netns is None else 8000
    prefix = ["ip", "netns", "exec", netns] if netns is not None else []
    process = subprocess.Popen([*prefix, sys.executable, "-m", "http.server", str(port), "--bind", address,
                                "--directory", str(directory)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        if not _serving(process, f"http://{address}:{port}/", 10):
            raise RuntimeError("the package index did not start")
        yield f"http://{address}:{port}/"
    finally:
        stop(process)


def push_rootfs(rootfs: Path, work: Path, reference: str, *, env: dict[str, str] | None = None,
                cmd: list[str] | None = None) -> None:
    """`rootfs` as a one-layer OCI image (umoci), copied to a registry (skopeo)."""
    layout = work / "layout"
    shutil.rmtree(layout, ignore_errors=True)
    subprocess.run(["umoci", "init", "--layout", str(layout)], check=True)
    subprocess.run(["umoci", "new", "--image", f"{layout}:img"], check=True)
    subprocess.run(["umoci", "insert", "--image", f"{layout}:img", str(rootfs), "/"], check=True,
                   stdout=subprocess.DEVNULL)
    config = ["umoci", "config", "--image", f"{layout}:img"]
    for name, value in (env or {}).items():
        config += ["--config.env", f"{name}={value}"]
    if cmd:
        for part in cmd:
            config += ["--config.cmd", part]
    if len(config) > 4:
        subprocess.run(config, check=True)
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:img",
                    f"docker://{reference}"], check=True)

