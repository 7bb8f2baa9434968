"""OCI images into layers, with the standard tools: `skopeo copy` fetches an image (a
registry, or for the operator an `oci:` layout or a `docker-archive:`) into an OCI layout,
`umoci raw unpack` turns it into a root file system (whiteouts applied, ids as the image
means them), and that tree becomes one layer of the store. Imports are cached by the
image's manifest digest: a second import of the same image does not pull again.

Registries are spoken to over TLS, verified, except on loopback (127.0.0.1, ::1,
localhost), where a local registry has no certificate."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from runtime.private import write_private

Log = Callable[[str], None]
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
TRANSPORTS = ("docker://", "oci:", "docker-archive:")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# A registry reference: [host[:port]/]path[:tag][@digest], lower-case path components.
_REFERENCE = re.compile(r"(?:[A-Za-z0-9.-]+(?::[0-9]+)?/|\[::1\](?::[0-9]+)?/)?[a-z0-9]+(?:[._-]+[a-z0-9]+)*"
                        r"(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
                        r"(?:@sha256:[0-9a-f]{64})?")
PULL_TIMEOUT = 600.0


class ImageError(Exception):
    """The image cannot be had; the message says why, for `errorReason`."""


class LayerStore(Protocol):
    """What the images need of runtime.snapshots.SnapshotStore."""

    def new_tree(self) -> Path: ...

    def publish_layer(self, tree: Path) -> str: ...

    def layer_path(self, digest: str) -> Path: ...

    def has_layer(self, digest: str) -> bool: ...

    def layer_size(self, digest: str) -> int: ...

    def cached_build(self, key: str) -> tuple[str, ...] | None: ...

    def record_build(self, key: str, layers: tuple[str, ...], *, weak: bool = False) -> None: ...


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an OCI image config a snapshot keeps."""

    env: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None
    user: str | None = None
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"env": self.env, "workdir": self.workdir, "user": self.user, "entrypoint": self.entrypoint,
                "cmd": self.cmd}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageConfig:
        return cls(env=dict(data.get("env") or {}), workdir=data.get("workdir"), user=data.get("user"),
                   entrypoint=data.get("entrypoint"), cmd=data.get("cmd"))


@dataclass(frozen=True)
class ImportedImage:
    reference: str
    digest: str  # the manifest's (or manifest list's) digest: the cache key
    layer: str  # the store's digest of the unpacked root file system
    config: ImageConfig


def registry_reference(name: str) -> str:
    """A user's image name as a `docker://` source, refusing anything else (a tenant must
    not name the server's files with `oci:` or `docker-archive:`)."""
    if not _REFERENCE.fullmatch(name):
        raise ImageError(f"{name!r} is not an image reference (expected [registry/]name[:tag][@sha256:...])")
    return f"docker://{name}"


def _tls_flag(source: str, flag: str) -> list[str]:
    if not source.startswith("docker://"):
        return []
    host = source[len("docker://"):].split("/", 1)[0]
    host = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
    return [f"--{flag}=false"] if host in LOOPBACK_HOSTS and "/" in source[len("docker://"):] else []


async def _run(argv: list[str], log: Log | None, timeout: float) -> tuple[int, str]:
    """Run a tool, its output lines to `log` as they come; (status, its last lines)."""
    process = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                   stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.STDOUT)
    assert process.stdout is not None
    tail: list[str] = []

    async def pump() -> None:
        assert process.stdout is not None
        async for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip()
            tail[:] = [*tail[-4:], line]
            if log is not None:
                log(line)

    try:
        await asyncio.wait_for(pump(), timeout)
        return await process.wait(), "\n".join(tail)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def _reason(output: str) -> str:
    """skopeo's error line, without its log prefix."""
    lines = [line for line in output.splitlines() if line.strip()]
    last = lines[-1] if lines else "no output"
    match = re.search(r'msg="(.*)"\s*$', last)
    reason = (match.group(1) if match else last).replace('\\"', '"')
    return re.sub(r'^Error parsing image name "[^"]*": ', "", reason)


def _blob(layout: Path, digest: str) -> Any:
    if not _DIGEST.fullmatch(digest):
        raise ImageError(f"the image's layout names a bad digest {digest!r}")
    return json.loads((layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_text())


def read_config(layout: Path) -> ImageConfig:
    index = json.loads((layout / "index.json").read_text())
    manifest = _blob(layout, index["manifests"][0]["digest"])
    config = _blob(layout, manifest["config"]["digest"]).get("config") or {}
    env: dict[str, str] = {}
    for item in config.get("Env") or ():
        name, _, value = str(item).partition("=")
        env[name] = value
    return ImageConfig(env=env, workdir=config.get("WorkingDir") or None, user=config.get("User") or None,
                       entrypoint=config.get("Entrypoint") or None, cmd=config.get("Cmd") or None)


class ImageImporter:
    """Imports record their layer in the store's build cache (weak: a rebuild finds it while
    a snapshot, a sandbox or a build still holds it) and the image's config in `cache_dir`."""

    def __init__(self, store: LayerStore, cache_dir: Path) -> None:
        self.store = store
        self.cache_dir = cache_dir
        self._locks: dict[str, asyncio.Lock] = {}

    async def digest(self, source: str, log: Log | None = None) -> str:
        if not source.startswith("docker://"):
            return ""  # a local layout or archive: no remote manifest to ask for
        status, output = await _run(["skopeo", "inspect", *_tls_flag(source, "tls-verify"), "--format",
                                     "{{.Digest}}", source], None, 120)
        digest = output.strip().splitlines()[-1] if output.strip() else ""
        if status != 0 or not _DIGEST.fullmatch(digest):
            raise ImageError(f"cannot pull {source.removeprefix('docker://')}: {_reason(output)}")
        return digest

    def cached(self, digest: str) -> ImportedImage | None:
        hex_digest = digest.split(":", 1)[1]
        layers = self.store.cached_build(f"image-{hex_digest}")
        try:
            data = json.loads((self.cache_dir / f"{hex_digest}.json").read_text())
        except (OSError, ValueError):
            return None
        if layers is None or len(layers) != 1:
            return None
        return ImportedImage(data["reference"], digest, layers[0], ImageConfig.from_json(data["config"]))

    async def import_image(self, source: str, log: Log) -> ImportedImage:
        """`source` with its transport (`docker://...`, `oci:path:tag`, `docker-archive:path`)."""
        digest = await self.digest(source, log)
        key = digest or source
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if digest and (hit := await asyncio.to_thread(self.cached, digest)) is not None:
                log(f"Using cached image {source.removeprefix('docker://')} ({digest})")
                return hit
            return await self._pull(source, digest, log)

    async def _pull(self, source: str, digest: str, log: Log) -> ImportedImage:
        # Both on the layers' file system, both removed by the store's clean_partial if
        # this process dies half-way.
        work = await asyncio.to_thread(self.store.new_tree)
        tree = await asyncio.to_thread(self.store.new_tree)
        try:
            layout = work / "layout"
            log(f"Pulling {source.removeprefix('docker://')}")
            status, output = await _run(["skopeo", "copy", *_tls_flag(source, "src-tls-verify"), source,
                                         f"oci:{layout}:image"], log, PULL_TIMEOUT)
            if status != 0:
                raise ImageError(f"cannot pull {source.removeprefix('docker://')}: {_reason(output)}")
            log("Unpacking the image")
            # `raw unpack`: the root file system alone, without the bundle's mtree manifest,
            # which would hash every file once more (41 s against 12 s for a 480 MB image).
            status, output = await _run(["umoci", "raw", "unpack", "--image", f"{layout}:image", str(tree)],
                                        log, PULL_TIMEOUT)
            if status != 0:
                raise ImageError(f"cannot unpack {source.removeprefix('docker://')}: {_reason(output)}")
            config = read_config(layout)
            layer = await asyncio.to_thread(self.store.publish_layer, tree)
            imported = ImportedImage(source.removeprefix("docker://"), digest, layer, config)
            if digest:
                hex_digest = digest.split(":", 1)[1]
                self.cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                write_private(self.cache_dir / f"{hex_digest}.json", json.dumps(
                    {"reference": imported.reference, "config": config.to_json()}).encode())
                self.store.record_build(f"image-{hex_digest}", (layer,), weak=True)
            log(f"Imported {imported.reference} as layer {layer[:12]}")
            return imported
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)
            await asyncio.to_thread(shutil.rmtree, tree, True)  # gone already unless it failed
