"""Built images out to OCI registries: the inverse of `runtime.images.oci`'s import.

A built image is its layers (bottom ... top, directories in overlayfs format in the
store, runtime/snapshots.py) and its config. `write_layout` turns it into an OCI image
layout: each non-empty layer one uncompressed tar (a blob named by its sha256, which is
also its diff_id), an image config (architecture, os, `rootfs.diff_ids`, Env, WorkingDir,
User, Entrypoint, Cmd), a manifest and `index.json` naming it by tag. `push` then has
`skopeo copy oci:<layout>:<tag> docker://<ref>` send it: skopeo gzips the layers on the
way (a registry's default), checks which blobs the registry has already, and speaks TLS,
verified, except to a loopback registry, as pulls do.

What a layer's tar holds, from the overlayfs format to the OCI one (what `umoci unpack`
and every container engine read back):

- a whiteout (a 0:0 character device) is an empty file `.wh.<name>`;
- an opaque directory (xattr `trusted.overlay.opaque=y`) is the directory, then
  `<dir>/.wh..wh..opq`;
- owners and modes (set-id bits included) as on disk, names empty (the host's user names
  mean nothing to the image), mtimes, symlinks as symlinks (never followed), hard links
  within the layer as links, device nodes and FIFOs; extended attributes as PAX
  `SCHILY.xattr.*` records (file capabilities, ACLs), except overlayfs' own `trusted.overlay.*`.
  Sockets are skipped (tar has no such entry; a socket is a running process's anyway).

Every tar is written as a stream to its blob file while being hashed, in 1 MiB reads:
memory stays constant whatever the layer's size. Layers are immutable (published once,
never modified), so nothing here races with a writer; they were still made by untrusted
build steps, so nothing is ever followed through a symlink.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import platform
import shutil
import stat
import tarfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from runtime.images.oci import ImageConfig, ImageError, LayerStore, Log, _reason, _run, _tls_flag, registry_reference

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"
OPAQUE_XATTR = "trusted.overlay.opaque"
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
PUSH_TIMEOUT = 1800.0
_CHUNK = 1 << 20
# Overlayfs xattrs that mean a layer is not self-contained (a directory renamed from a lower
# one, a file whose data is in a lower one): no tar can say that, so such a layer is refused.
_UNEXPORTABLE_XATTRS = ("trusted.overlay.redirect", "trusted.overlay.metacopy")
_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
                  "s390x": "s390x", "riscv64": "riscv64"}


class Cancelled(Exception):
    """The export was cancelled while a layer was being written."""


@dataclass(frozen=True)
class ExportedLayer:
    source: str  # the store's digest of the layer's tree
    digest: str  # "sha256:...", the tar's (= its diff_id: the blob is uncompressed)
    size: int  # bytes of the tar
    entries: int


@dataclass(frozen=True)
class Exported:
    layout: Path
    tag: str
    manifest_digest: str
    config_digest: str
    layers: tuple[ExportedLayer, ...]  # the non-empty ones, bottom ... top

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.layers)


@dataclass(frozen=True)
class Pushed:
    reference: str
    digest: str  # the manifest's digest in the registry (after skopeo's compression)
    exported: Exported


class _HashingWriter:
    """A file object for tarfile's stream mode: every byte to the file and to the hash."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.out.write(data)


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:  # a file system without xattrs, or a symlink on one that refuses them
        return {}
    out = {}
    for name in sorted(names):
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
    return out


def _entries(root: str) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, lstat) of everything below `root`, parents before children, names
    sorted (the same tree gives the same tar); never follows a symlink. Iterative: a build
    step can nest directories deeper than Python's recursion limit."""
    stack: list[Iterator[str]] = [iter(sorted(os.listdir(root)))]
    prefixes = [""]
    while stack:
        name = next(stack[-1], None)
        if name is None:
            stack.pop()
            prefixes.pop()
            continue
        rel = prefixes[-1] + name
        st = os.lstat(os.path.join(root, rel))
        yield rel, st
        if stat.S_ISDIR(st.st_mode):
            stack.append(iter(sorted(os.listdir(os.path.join(root, rel)))))
            prefixes.append(rel + "/")


def _info(name: str, st: os.stat_result, kind: bytes, *, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.uname = info.gname = ""
    info.mtime = int(st.st_mtime)
    info.size = size
    return info


def _marker(name: str, st: os.stat_result) -> tarfile.TarInfo:
    """An empty regular file `name` (a whiteout or an opaque marker): root's, mode 0, with
    the overlayfs entry's mtime."""
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.uname, info.gname = tarfile.REGTYPE, 0, 0, 0, "", ""
    info.mtime = int(st.st_mtime)
    return info


def write_layer_tar(root: Path, out: BinaryIO, stop: threading.Event | None = None) -> tuple[str, int, int]:
    """The layer at `root` as an OCI layer tar to `out`: ("sha256:...", bytes, entries).
    `stop` set: Cancelled at the next entry."""
    writer = _HashingWriter(out)
    count = 0
    links: dict[tuple[int, int], str] = {}
    base = str(root)
    with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT,  # type: ignore[call-overload]
                      encoding="utf-8", errors="surrogateescape") as tar:
        tar.copybufsize = _CHUNK
        for rel, st in _entries(base):
            if stop is not None and stop.is_set():
                raise Cancelled
            path = os.path.join(base, rel)
            directory, name = os.path.split(rel)
            mode = st.st_mode
            if stat.S_ISCHR(mode) and st.st_rdev == 0:  # an overlayfs whiteout: the name is deleted
                tar.addfile(_marker(os.path.join(directory, WHITEOUT_PREFIX + name), st))
                count += 1
                continue
            if name.startswith(WHITEOUT_PREFIX):
                # Every reader would take it for a deletion (of `name` minus the prefix).
                raise ImageError(f"cannot export {rel}: names starting with {WHITEOUT_PREFIX} mean deletions "
                                 "in an OCI layer")
            xattrs = _xattrs(path)
            for bad in _UNEXPORTABLE_XATTRS:
                if bad in xattrs:
                    raise ImageError(f"cannot export {rel}: it has {bad} (an overlayfs redirect or metacopy, "
                                     "which a tar layer cannot express)")
            if stat.S_ISSOCK(mode):
                continue
            if stat.S_ISREG(mode) and st.st_nlink > 1 and (st.st_dev, st.st_ino) in links:
                info = _info(rel, st, tarfile.LNKTYPE)
                info.linkname = links[(st.st_dev, st.st_ino)]
            elif stat.S_ISREG(mode):
                info = _info(rel, st, tarfile.REGTYPE, size=st.st_size)
                if st.st_nlink > 1:
                    links[(st.st_dev, st.st_ino)] = rel
            elif stat.S_ISDIR(mode):
                info = _info(rel, st, tarfile.DIRTYPE)
            elif stat.S_ISLNK(mode):
                info = _info(rel, st, tarfile.SYMTYPE)
                info.linkname = os.readlink(path)
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                info = _info(rel, st, tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE)
                info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
            elif stat.S_ISFIFO(mode):
                info = _info(rel, st, tarfile.FIFOTYPE)
            else:
                continue
            opaque = xattrs.pop(OPAQUE_XATTR, None)
            info.pax_headers = {f"SCHILY.xattr.{key}": value.decode("utf-8", "surrogateescape")
                                for key, value in xattrs.items() if not key.startswith("trusted.overlay.")}
            if info.type == tarfile.REGTYPE:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                with os.fdopen(fd, "rb") as data:
                    tar.addfile(info, data)
            else:
                tar.addfile(info)
            count += 1
            if opaque == b"y" and stat.S_ISDIR(mode):
                tar.addfile(_marker(os.path.join(rel, OPAQUE_MARKER), st))
                count += 1
    return f"sha256:{writer.hash.hexdigest()}", writer.size, count


def _is_empty(root: Path) -> bool:
    with os.scandir(root) as entries:
        return next(entries, None) is None


def architecture() -> str:
    """The OCI name of this machine's architecture: the layers hold its binaries."""
    machine = platform.machine()
    return _ARCHITECTURES.get(machine, machine)


def image_config(config: ImageConfig, diff_ids: Sequence[str], *, created: str | None = None) -> dict[str, Any]:
    inner: dict[str, Any] = {}
    if config.env:
        inner["Env"] = [f"{name}={value}" for name, value in config.env.items()]
    if config.workdir:
        inner["WorkingDir"] = config.workdir
    if config.user:
        inner["User"] = config.user
    if config.entrypoint:
        inner["Entrypoint"] = list(config.entrypoint)
    if config.cmd:
        inner["Cmd"] = list(config.cmd)
    document: dict[str, Any] = {"architecture": architecture(), "os": "linux", "config": inner,
                                "rootfs": {"type": "layers", "diff_ids": list(diff_ids)}}
    if created:
        document["created"] = created
    return document


def _write_blob(layout: Path, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return f"sha256:{digest}", len(data)


def write_layout(store: LayerStore, layers: Sequence[str], config: ImageConfig, layout: Path, tag: str, *,
                 created: str | None = None, log: Log | None = None,
                 stop: threading.Event | None = None) -> Exported:
    """The image as an OCI layout at `layout` (a new or empty directory), tagged `tag`.
    Blocking: call it from a thread (`export_layout`)."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    exported: list[ExportedLayer] = []
    for source in layers:
        root = store.layer_path(source)
        if _is_empty(root):
            continue
        partial = blobs / f".partial-{source}"
        with open(partial, "wb") as out:
            digest, size, entries = write_layer_tar(root, out, stop)
        final = blobs / digest.split(":", 1)[1]
        os.replace(partial, final)
        exported.append(ExportedLayer(source, digest, size, entries))
        if log is not None:
            log(f"Exported layer {source[:12]} as {digest[:19]} ({size / 1e6:.1f} MB, {entries} entries)")
    document = image_config(config, [layer.digest for layer in exported], created=created)
    config_digest, config_size = _write_blob(layout, json.dumps(document, sort_keys=True).encode())
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE,
                "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest, "size": config_size},
                "layers": [{"mediaType": LAYER_MEDIA_TYPE, "digest": layer.digest, "size": layer.size}
                           for layer in exported]}
    manifest_digest, manifest_size = _write_blob(layout, json.dumps(manifest, sort_keys=True).encode())
    index = {"schemaVersion": 2, "manifests": [{"mediaType": MANIFEST_MEDIA_TYPE, "digest": manifest_digest,
                                                "size": manifest_size, "annotations": {REF_NAME: tag}}]}
    (layout / "index.json").write_text(json.dumps(index))
    return Exported(layout, tag, manifest_digest, config_digest, tuple(exported))


async def _in_thread(fn: Callable[..., Exported], written: Path, remove: bool, **kwargs: Any) -> Exported:
    """`fn` in a worker thread; cancelled, it is told to stop at its next entry and waited
    for (a thread cannot be killed), and with `remove` the half-written layout goes."""
    stop = threading.Event()
    loop = asyncio.get_running_loop()
    work = loop.run_in_executor(None, functools.partial(fn, stop=stop, **kwargs))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        stop.set()
        await asyncio.wait([work])
        if remove:
            await loop.run_in_executor(None, shutil.rmtree, written, True)
        raise


async def export_layout(store: LayerStore, layers: Sequence[str], config: ImageConfig, layout: Path,
                        tag: str = "latest", *, created: str | None = None, log: Log | None = None) -> Exported:
    """`write_layout` from async code, in a thread. A failure or cancel removes what it
    wrote of a layout that did not exist before."""
    fresh = not await asyncio.to_thread(layout.exists)
    loop = asyncio.get_running_loop()
    threaded: Log | None = None
    if log is not None:
        def threaded(line: str) -> None:  # the thread's lines reach `log` on the loop's thread
            loop.call_soon_threadsafe(log, line)
    try:
        return await _in_thread(write_layout, layout, fresh, store=store, layers=layers, config=config,
                                layout=layout, tag=tag, created=created, log=threaded)
    except (OSError, ImageError, Cancelled):
        if fresh:
            await asyncio.to_thread(shutil.rmtree, layout, True)
        raise


def push_reference(name: str) -> str:
    """A destination as `docker://name`: a registry reference with a tag (or none:
    `latest`), never a digest, which a push cannot name."""
    if "@" in name:
        raise ImageError(f"{name!r}: push to a tag (registry/name:tag), not a digest")
    return registry_reference(name)


async def push(store: LayerStore, layers: Sequence[str], config: ImageConfig, reference: str, log: Log, *,
               created: str | None = None, timeout: float = PUSH_TIMEOUT) -> Pushed:
    """Export the image into a temporary layout on the layers' file system (removed
    afterwards, however this ends; a crashed process's is the store's `clean_partial`'s)
    and copy it to `reference` with skopeo. ImageError says why a push failed."""
    destination = push_reference(reference)  # before anything is written
    work = await asyncio.to_thread(store.new_tree)
    tag = "image"
    try:
        log(f"Exporting {len(layers)} layer(s)")
        exported = await export_layout(store, layers, config, work / "layout", tag, created=created, log=log)
        log(f"Pushing {reference} ({exported.size / 1e6:.0f} MB uncompressed)")
        digest_file = work / "digest"
        status, output = await _run(["skopeo", "copy", "--retry-times", "2", *_tls_flag(destination, "dest-tls-verify"),
                                     "--digestfile", str(digest_file), f"oci:{exported.layout}:{tag}", destination],
                                    log, timeout)
        if status != 0:
            raise ImageError(f"cannot push {reference}: {_reason(output)}")
        digest = (await asyncio.to_thread(digest_file.read_text)).strip()
        log(f"Pushed {reference}@{digest}")
        return Pushed(reference, digest, exported)
    except TimeoutError:
        raise ImageError(f"cannot push {reference}: skopeo did not finish in {timeout:.0f} s") from None
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)
