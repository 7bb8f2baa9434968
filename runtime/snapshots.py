"""Snapshots and the read-only layers their root file systems are made of.

    LAYERS/<sha256 hex>/      one immutable layer: a plain directory tree in overlayfs
                              format (whiteouts are 0:0 character devices, opaque
                              directories carry trusted.overlay.opaque="y"), owned by the
                              ids the image means (root 0, daytona 1000). Published once by
                              an atomic rename from LAYERS/.tmp-*; never modified after.
    LAYERS/.meta/<digest>.json  {"size": bytes} of a published layer
    LAYERS/.builds/<key>.json   {"layers": [...], "weak": bool} of a cached build, so stores
                              on other state dirs sharing LAYERS reuse it. The default
                              snapshot's keeps its layers; a weak one (an image build's
                              step or import) only finds them while something else does
    SNAPSHOTS/<name>.json     0600: {"name", "layers": [bottom ... top], "user", "env",
                              "workdir", "entrypoint", "cmd", "size", "created"}

LAYERS defaults to STATE/layers and can be shared between state dirs (RUNTIME_LAYERS_DIR;
the tests share one per machine so the default snapshot is built once). A layer's digest
is the sha256 of its tree (`tree_digest`: paths, types, modes, owners, contents, device
numbers, xattrs), so publishing the same tree twice keeps one copy, and a test can check
that a lower layer was never modified by hashing it again.

Only the runtime's user (root) reads or writes here: every directory is 0700, and nothing
below is ever a path a sandbox can write.

A layer goes (`collect`) once no snapshot, no strong cached build, no existing sandbox and
no hold names it. A hold (`holding()`) is what a build or a sandbox create in progress
has taken: every layer it found in the cache or published while the hold is open, in
this process, kept until it ends; taking and collecting are under one lock, so a layer
is never removed between being found and being used.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from runtime.private import owned_dir, private_dir, write_private
from toolbox.options import env as env_option

DEFAULT = "default"
LAYERS_ENV = "RUNTIME_LAYERS_DIR"
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_TMP_PREFIX = ".tmp-"
Progress = Callable[[str], None]

# Holds of this process (see the module doc): the one open in the current context, and all.
_HOLD: ContextVar[set[str] | None] = ContextVar("layer_hold", default=None)
_HOLDS: dict[int, set[str]] = {}  # by id(): two holds with the same layers are still two
_GC_LOCK = threading.Lock()


class SnapshotError(Exception):
    """A snapshot that cannot be built or used; the message says what to do."""


@dataclass(frozen=True)
class Snapshot:
    name: str
    layers: tuple[str, ...]  # bottom ... top digests
    user: str = "daytona"
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/home/daytona"
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    size: int = 0  # bytes, of all its layers
    created: str = ""  # ISO 8601, UTC

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "layers": list(self.layers), "user": self.user, "env": dict(self.env),
                "workdir": self.workdir, "entrypoint": list(self.entrypoint), "cmd": list(self.cmd),
                "size": self.size, "created": self.created}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Snapshot:
        return cls(name=str(data["name"]), layers=tuple(str(d) for d in data["layers"]),
                   user=str(data.get("user", "daytona")), env={str(k): str(v) for k, v in data.get("env", {}).items()},
                   workdir=str(data.get("workdir", "/home/daytona")),
                   entrypoint=tuple(str(a) for a in data.get("entrypoint", ())),
                   cmd=tuple(str(a) for a in data.get("cmd", ())), size=int(data.get("size", 0)),
                   created=str(data.get("created", "")))


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def valid_name(name: str) -> bool:
    # Daytona's snapshot names look like images ("daytonaio/sandbox:0.4.3"); any printable
    # name is stored under a percent-encoded file name.
    return 0 < len(name) <= 200 and name.isprintable() and name.strip() == name


def valid_digest(digest: str) -> bool:
    return bool(_DIGEST.match(digest))


# ---- the tree hash -------------------------------------------------------------------------

def tree_digest(root: Path) -> tuple[str, int]:
    """(sha256 hex, bytes of regular files) of the tree at `root`: every entry's relative
    path, type, mode, owner, mtime, size and contents (files), target (symlinks), device number
    (whiteouts, device nodes) and extended attributes. Never follows a symlink; does not
    descend into another file system mounted inside (its mount point is hashed as is)."""
    digest = hashlib.sha256()
    size = 0
    root_dev = os.lstat(root).st_dev
    for rel, st in _walk(root, root_dev):
        path = os.path.join(root, rel) if rel else str(root)
        kind = stat.S_IFMT(st.st_mode)
        fields = [rel, f"{st.st_mode:o}", str(st.st_uid), str(st.st_gid)]
        if rel:  # the root's own mtime changes as it is renamed into place
            fields.append(str(st.st_mtime_ns))
        if kind == stat.S_IFREG:
            fields.append(str(st.st_size))
            fields.append(_file_hash(path))
            size += st.st_size
        elif kind == stat.S_IFLNK:
            fields.append(os.readlink(path))
        elif kind in (stat.S_IFCHR, stat.S_IFBLK):
            fields.append(f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}")
        for name in sorted(_xattrs(path)):
            fields.append(f"{name}={os.getxattr(path, name, follow_symlinks=False).hex()}")
        digest.update("\0".join(fields).encode("utf-8", "surrogateescape") + b"\n")
    return digest.hexdigest(), size


def _walk(root: Path, root_dev: int, rel: str = "") -> Iterator[tuple[str, os.stat_result]]:
    path = os.path.join(root, rel) if rel else str(root)
    st = os.lstat(path)
    yield rel, st
    if not stat.S_ISDIR(st.st_mode) or st.st_dev != root_dev:
        return
    for name in sorted(os.listdir(path)):
        yield from _walk(root, root_dev, os.path.join(rel, name) if rel else name)


def _file_hash(path: str) -> str:
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
    finally:
        os.close(fd)
    return h.hexdigest()


def _xattrs(path: str) -> list[str]:
    try:
        return os.listxattr(path, follow_symlinks=False)
    except OSError:  # a file system without xattrs, or a symlink on one that refuses
        return []


# ---- removing trees safely ----------------------------------------------------------------

def _mounts_under(path: Path) -> list[str]:
    prefix = str(path).rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == str(path) or point.startswith(prefix):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def remove_tree(path: Path) -> None:
    """Delete a (half-built) tree: first detach anything still mounted inside it (a build
    that crashed with /proc mounted), so the removal never reaches another file system."""
    import subprocess

    for point in _mounts_under(path):
        subprocess.run(["umount", "--lazy", point], check=False, capture_output=True)
    if _mounts_under(path):
        raise SnapshotError(f"{path} still has file systems mounted inside; not removing it")
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _owned_dir(path: Path) -> Path:
    try:
        return owned_dir(path, "layers")
    except PermissionError as exc:
        raise SnapshotError(f"{exc} ({LAYERS_ENV})") from None


# ---- the store ----------------------------------------------------------------------------

class SnapshotStore:
    def __init__(self, state_root: Path, layers_dir: Path | None = None) -> None:
        if layers_dir is None and (configured := env_option(LAYERS_ENV)):
            layers_dir = Path(configured)
        own = (state_root / "layers").absolute()
        self.state_root = state_root.absolute()
        self.layers_dir = _owned_dir((layers_dir or own).absolute())
        # Shared with other state dirs, whose snapshots and sandboxes this store cannot see.
        self.shared = self.layers_dir != own
        self.snapshots_dir = private_dir(state_root.absolute() / "snapshots")
        self._meta = private_dir(self.layers_dir / ".meta")
        self._builds = private_dir(self.layers_dir / ".builds")

    # snapshots

    def _file(self, name: str) -> Path:
        if not valid_name(name):
            raise KeyError(name)
        return self.snapshots_dir / f"{quote(name, safe='')}.json"

    def get(self, name: str) -> Snapshot:
        try:
            data = json.loads(self._file(name).read_bytes())
        except (FileNotFoundError, NotADirectoryError):
            raise KeyError(name) from None
        return Snapshot.from_json(data)

    def list(self) -> list[Snapshot]:
        out = []
        for entry in sorted(self.snapshots_dir.glob("*.json")):
            if entry.name.startswith("."):
                continue
            try:
                out.append(Snapshot.from_json(json.loads(entry.read_bytes())))
            except (OSError, ValueError, KeyError):
                continue  # half a file cannot exist (atomic writes); skip a foreign one
        return out

    def put(self, snapshot: Snapshot) -> None:
        if not valid_name(snapshot.name):
            raise ValueError(f"invalid snapshot name {snapshot.name!r}: 1-200 printable characters, "
                             "no leading or trailing space")
        for digest in snapshot.layers:
            if not self.has_layer(digest):
                raise ValueError(f"snapshot {snapshot.name!r} names layer {digest}, which is not in {self.layers_dir}")
        write_private(self._file(snapshot.name), json.dumps(snapshot.to_json(), indent=1).encode())

    def delete(self, name: str) -> None:
        """Forget the snapshot; its layers stay until `collect` finds no user of them."""
        try:
            self._file(name).unlink()
        except FileNotFoundError:
            raise KeyError(name) from None

    # layers

    def layer_path(self, digest: str) -> Path:
        if not valid_digest(digest):
            raise KeyError(digest)
        return self.layers_dir / digest

    def lower_dirs(self, layers: tuple[str, ...]) -> builtins.list[Path]:
        """The layers' directories in overlayfs `lowerdir=` order (top first); KeyError
        names a layer that is not here."""
        missing = [d for d in layers if not self.has_layer(d)]
        if missing:
            raise KeyError(missing[0])
        return [self.layer_path(d) for d in reversed(layers)]

    def has_layer(self, digest: str) -> bool:
        return valid_digest(digest) and self.layer_path(digest).is_dir()

    def layer_size(self, digest: str) -> int:
        try:
            return int(json.loads((self._meta / f"{digest}.json").read_bytes())["size"])
        except (OSError, ValueError, KeyError):
            return 0

    def new_tree(self) -> Path:
        """An empty directory on the layers' file system to build a layer in, then hand to
        `publish_layer`. One left by a crashed process is removed by `clean_partial`."""
        path = self.layers_dir / f"{_TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        path.mkdir(mode=0o755)
        return path

    def publish_layer(self, tree: Path) -> str:
        """Hash the finished tree and move it in as LAYERS/<digest> by one rename; returns the
        digest. A tree identical to a published layer is deleted instead (one copy)."""
        tree = tree.absolute()
        if tree.parent != self.layers_dir:
            raise ValueError(f"build layers in {self.layers_dir} (SnapshotStore.new_tree()), not {tree}")
        if _mounts_under(tree):
            raise SnapshotError(f"{tree} has file systems mounted inside; unmount them before publishing")
        digest, size = tree_digest(tree)
        target = self.layers_dir / digest
        with _GC_LOCK:  # held before it is visible: a collect cannot take it from the caller
            write_private(self._meta / f"{digest}.json", json.dumps({"size": size}).encode())
            _held(digest)
            try:
                os.rename(tree, target)
                return digest
            except OSError:
                if not target.is_dir():
                    raise
        remove_tree(tree)  # published already (rename refuses a non-empty target)
        return digest

    def collect(self, in_use: set[str] | Callable[[], set[str]], everything: bool = False) -> builtins.list[str]:
        """Remove the layers that no snapshot of this store, no strong cached build, no hold
        and nothing in `in_use` (the layers of existing sandboxes) names, and the weak
        cached builds that named them; returns their digests. A callable `in_use` is read
        under the lock, so a sandbox create that ends meanwhile (its hold released, its
        layers now named by its record) is seen. On a layers dir shared
        between state dirs nothing is removed unless `everything` says `in_use` holds the
        other state dirs' layers too (it never can by itself: their records are not here)."""
        if self.shared and not everything:
            return []
        doomed: dict[str, Path] = {}
        with _GC_LOCK:
            keep = set(in_use() if callable(in_use) else in_use).union(*_HOLDS.values())
            for snapshot in self.list():
                keep.update(snapshot.layers)
            builds = self._build_records()
            for _, layers, weak in builds:
                if not weak:
                    keep.update(layers)
            for entry in self.layers_dir.iterdir():
                if valid_digest(entry.name) and entry.name not in keep:
                    # Out of sight first (one rename), then deleted: never half a layer by its name.
                    doomed[entry.name] = self.layers_dir / f"{_TMP_PREFIX}{os.getpid()}-gone-{secrets.token_hex(4)}"
                    os.rename(entry, doomed[entry.name])
            for record, layers, weak in builds:
                if weak and doomed.keys() & set(layers):
                    record.unlink(missing_ok=True)
        for digest, path in doomed.items():
            remove_tree(path)
            (self._meta / f"{digest}.json").unlink(missing_ok=True)
        return sorted(doomed)

    def _build_records(self) -> builtins.list[tuple[Path, tuple[str, ...], bool]]:
        out = []
        for record in self._builds.glob("*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                data = json.loads(record.read_bytes())
                # Records from before weak ones existed: image builds' steps and imports.
                weak = data.get("weak", record.name.startswith(("step-", "image-")))
                out.append((record, tuple(str(d) for d in data["layers"]), bool(weak)))
        return out

    @contextlib.contextmanager
    def holding(self) -> Iterator[set[str]]:
        """Open a hold for the current context (a build, a sandbox create): the layers it
        finds (`cached_build`, `hold`) or publishes stay until it closes."""
        hold: set[str] = set()
        with _GC_LOCK:
            _HOLDS[id(hold)] = hold
        token = _HOLD.set(hold)
        try:
            yield hold
        finally:
            _HOLD.reset(token)
            with _GC_LOCK:
                del _HOLDS[id(hold)]

    def hold(self, layers: tuple[str, ...]) -> bool:
        """Add `layers` to the current hold, if they are all here (False: one is gone)."""
        with _GC_LOCK:
            if not all(self.has_layer(d) for d in layers):
                return False
            for digest in layers:
                _held(digest)
            return True

    def clean_partial(self) -> None:
        """Remove the temporary trees of processes that are gone (a crashed build)."""
        for entry in self.layers_dir.glob(f"{_TMP_PREFIX}*"):
            pid = entry.name[len(_TMP_PREFIX):].split("-", 1)[0]
            if pid.isdigit() and _alive(int(pid)):
                continue
            remove_tree(entry)

    # cached builds (shared by every store on the same layers dir)

    @contextlib.contextmanager
    def build_lock(self, key: str) -> Iterator[None]:
        """Held while `key` is built: a second process waits, then finds the cached build."""
        fd = os.open(self._builds / f".{key}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def cached_build(self, key: str) -> tuple[str, ...] | None:
        """The layers of a cached build, all still here (and held by the current hold)."""
        try:
            layers = tuple(json.loads((self._builds / f"{key}.json").read_bytes())["layers"])
        except (OSError, ValueError, KeyError):
            return None
        return layers if layers and self.hold(layers) else None

    def record_build(self, key: str, layers: tuple[str, ...], *, weak: bool = False,
                     config: dict[str, Any] | None = None) -> None:
        """`weak`: the record keeps no layer from `collect` by itself (see the module doc);
        `config`: what else the build made (an image config), for `cached_config`."""
        record: dict[str, Any] = {"layers": list(layers), "weak": weak, "created": now_iso()}
        if config is not None:
            record["config"] = config
        write_private(self._builds / f"{key}.json", json.dumps(record).encode())

    def cached_config(self, key: str) -> dict[str, Any] | None:
        """The `config` recorded with a cached build, if any."""
        try:
            config = json.loads((self._builds / f"{key}.json").read_bytes()).get("config")
        except (OSError, ValueError, AttributeError):
            return None
        return config if isinstance(config, dict) else None

    def snapshot_of(self, name: str, layers: tuple[str, ...], **fields: Any) -> Snapshot:
        """A Snapshot record over published layers, its size their sum."""
        return Snapshot(name=name, layers=layers, size=sum(self.layer_size(d) for d in layers),
                        created=fields.pop("created", None) or now_iso(), **fields)

    def ensure_default(self, progress: Progress | None = None) -> Snapshot:
        """The `default` snapshot (the `base` stage of images/sandbox/Dockerfile on a Debian
        bookworm made with debootstrap, see runtime/rootfs.py), built on first use, in
        seconds from the cache after that."""
        from runtime.rootfs import ensure_default

        return ensure_default(self, progress or (lambda line: None))


def _held(digest: str) -> None:
    """Into the current context's hold, if one is open (the caller has _GC_LOCK)."""
    hold = _HOLD.get()
    if hold is not None:
        hold.add(digest)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

