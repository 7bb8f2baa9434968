"""Watchers: one watchfiles `awatch` loop per watched path, feeding an `EventRing`.

watchfiles reports a rename as a delete plus a create; a batch holding both for the same
inode is reported as one `move`. To recognise entries that existed before the watch began,
the watcher remembers the inodes of up to `INODE_CACHE` entries (scanned at start, then
kept up to date from events), so memory stays bounded on huge trees.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat as stat_module
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from toolbox.errors import Code, DaemonError, os_errors
from toolbox.timestamps import iso_utc
from toolbox.tasks import BackgroundTask, Spawn
from toolbox.watch.events import Event, EventRing

if TYPE_CHECKING:
    from watchfiles import Change

INODE_CACHE = 50_000
# At most this many entries are reported from the scan of one batch's new directories.
NEW_DIR_SCAN_LIMIT = 10_000
# Every watcher is one inotify instance, and the kernel allows a user only 128 of them
# (fs.inotify.max_user_instances) across all of the user's processes.
MAX_WATCHERS = int(os.environ.get("TOOLBOX_MAX_WATCHERS", "16"))
# A recursive watch costs one inotify watch per directory, from a per-user pool as well.
MAX_RECURSIVE_DIRS = 20_000
READY_TIMEOUT = 10.0
# A polled watcher nobody has read for this long is stopped (its client went away).
IDLE_EXPIRY = 600.0
_KIND = {"added": "create", "modified": "modify", "deleted": "delete"}  # by watchfiles.Change name


def stat_entry(path: str) -> dict[str, Any] | None:
    """The entry's stat in the shape of Daytona's FileInfo, or None once it is gone."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return {
        "size": st.st_size,
        "mode": stat_module.filemode(st.st_mode),
        "permissions": format(stat_module.S_IMODE(st.st_mode), "04o"),
        "isDir": stat_module.S_ISDIR(st.st_mode),
        "modTime": iso_utc(st.st_mtime),
        "owner": st.st_uid,
        "group": st.st_gid,
        "inode": (st.st_dev, st.st_ino),
    }


def count_directories(root: Path, limit: int) -> int:
    """Blocking: directories under `root` (itself included), counting stops past `limit`."""
    count, pending = 0, [str(root)]
    while pending and count <= limit:
        directory = pending.pop()
        count += 1
        try:
            with os.scandir(directory) as entries:
                pending.extend(e.path for e in entries if e.is_dir(follow_symlinks=False))
        except OSError:
            continue
    return count


@dataclass
class Watcher:
    id: str
    path: Path
    recursive: bool
    ring: EventRing
    last_read: float = field(default_factory=time.monotonic)
    # Read by watchfiles' Rust thread (it only calls is_set), so a thread-safe event.
    stop: threading.Event = field(default_factory=threading.Event)
    # Set once the kernel watches are in place: changes after this are never missed.
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    task: BackgroundTask | None = None
    _inodes: OrderedDict[str, tuple[int, int]] = field(default_factory=OrderedDict)

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "path": str(self.path), "recursive": self.recursive, "cursor": self.ring.last_seq}

    def _remember(self, path: str, inode: tuple[int, int]) -> None:
        self._inodes[path] = inode
        self._inodes.move_to_end(path)
        while len(self._inodes) > INODE_CACHE:
            self._inodes.popitem(last=False)

    def scan(self) -> None:
        """Blocking: remember the inodes of what is already there (bounded)."""
        roots = [self.path]
        while roots and len(self._inodes) < INODE_CACHE:
            root = roots.pop()
            try:
                with os.scandir(root) as entries:
                    for entry in entries:
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        self._remember(entry.path, (st.st_dev, st.st_ino))
                        if self.recursive and stat_module.S_ISDIR(st.st_mode):
                            roots.append(Path(entry.path))
            except (NotADirectoryError, OSError):
                continue

    def to_events(self, changes: set[tuple[Change, str]]) -> list[Event]:
        """Blocking (stat calls): turn one watchfiles batch into our events."""
        stamp = iso_utc()
        deleted: dict[tuple[int, int], str] = {}
        rows: list[tuple[str, str, dict[str, Any] | None]] = []
        for change, path in sorted(changes, key=lambda c: (c[0].name != "deleted", c[1])):
            kind = _KIND[change.name]
            if kind == "delete":
                inode = self._inodes.pop(path, None)
                if inode is not None:
                    deleted[inode] = path
                rows.append((kind, path, None))
            else:
                rows.append((kind, path, stat_entry(path)))
        moved_from: dict[str, str] = {}
        for kind, path, entry in rows:
            if kind == "create" and entry and entry["inode"] in deleted:
                moved_from[path] = deleted.pop(entry["inode"])
        if self.recursive:
            rows += self._contents_of_new_dirs(rows)
        events: list[Event] = []
        consumed = set(moved_from.values())
        for kind, path, entry in rows:
            if kind == "delete" and path in consumed:
                continue
            if kind == "create" and entry is not None and self._inodes.get(path) == entry["inode"]:
                continue  # already reported (found while scanning its new parent directory)
            if entry is not None:
                self._remember(path, entry["inode"])
            event: Event = {"type": kind, "path": path, "timestamp": stamp}
            if path in moved_from:
                event.update(type="move", oldPath=moved_from[path])
            if entry is not None:
                info = {k: v for k, v in entry.items() if k != "inode"}
                event["isDir"] = info["isDir"]
                event["stat"] = info
            else:
                event["stat"] = None
            events.append(event)
        return events

    def _contents_of_new_dirs(self, rows: list[tuple[str, str, dict[str, Any] | None]]) -> list[tuple[str, str, dict[str, Any] | None]]:
        """Entries created inside a new directory before its kernel watch existed.

        The kernel watch on a new directory is added only after its creation is seen, so
        whatever was written into it in between would go unreported without this scan.
        """
        found: list[tuple[str, str, dict[str, Any] | None]] = []
        pending = [path for kind, path, entry in rows if kind in ("create", "move") and entry and entry["isDir"]]
        seen = {path for _, path, _ in rows}
        while pending and len(found) < NEW_DIR_SCAN_LIMIT:
            try:
                with os.scandir(pending.pop()) as entries:
                    for child in entries:
                        if child.path in seen or child.path in self._inodes:
                            continue
                        entry = stat_entry(child.path)
                        if entry is None:
                            continue
                        found.append(("create", child.path, entry))
                        seen.add(child.path)
                        if entry["isDir"]:
                            pending.append(child.path)
            except OSError:
                continue
        return found

    async def run(self) -> None:
        """Watch in a thread of its own, with its own event loop, until stopped.

        watchfiles builds its kernel watches (a walk of the whole tree when recursive)
        synchronously and then waits for changes in a worker thread; giving every watcher
        its own thread keeps both off the daemon's event loop and out of its shared pool
        of worker threads, however many watchers there are.
        """
        loop = asyncio.get_running_loop()
        done = asyncio.Event()

        def publish(events: list[Event]) -> None:
            asyncio.run_coroutine_threadsafe(self.ring.publish(events), loop)

        def main() -> None:
            try:
                asyncio.run(self._watch(publish, lambda: loop.call_soon_threadsafe(self.ready.set)))
            except Exception as exc:  # noqa: BLE001 - reported to readers, never a daemon crash
                publish([{"type": "error", "path": str(self.path), "timestamp": iso_utc(), "message": str(exc)}])
            finally:
                loop.call_soon_threadsafe(done.set)

        threading.Thread(target=main, name=f"watch {self.path}", daemon=True).start()
        try:
            await done.wait()
        finally:
            self.stop.set()
            self.ready.set()
            await asyncio.sleep(0)  # let the last publish land before closing
            await self.ring.close()

    async def _watch(self, publish: Callable[[list[Event]], None], armed: Callable[[], object]) -> None:
        """Runs in the watcher's own thread and event loop: blocking calls are fine here."""
        from watchfiles import awatch  # (and multiprocessing) loaded on the first watch

        self.scan()
        batches = awatch(
            self.path,
            watch_filter=None,
            recursive=self.recursive,
            stop_event=self.stop,
            debounce=200,
            step=20,
            rust_timeout=5_000,
            yield_on_timeout=True,
            ignore_permission_denied=True,
        )
        next_batch = asyncio.ensure_future(batches.__anext__())
        # One step into awatch: it registers the kernel watches (RustNotify) before its
        # first await, so from here on no change can slip by unreported.
        await asyncio.sleep(0)
        armed()
        try:
            while True:
                try:
                    changes = await next_batch
                except StopAsyncIteration:
                    break
                if changes:
                    publish(self.to_events(changes))
                if not self.path.exists():
                    # The watched path itself went away; nothing more will come.
                    publish([{"type": "delete", "path": str(self.path), "timestamp": iso_utc(), "stat": None}])
                    break
                if time.monotonic() - self.last_read > IDLE_EXPIRY:
                    break  # a polled watcher whose client went away
                next_batch = asyncio.ensure_future(batches.__anext__())
        finally:
            self.stop.set()
            if not next_batch.done():
                next_batch.cancel()
            with contextlib.suppress(BaseException):
                await batches.aclose()


class WatchService:
    """Every active watcher, by id; the daemon stops them all on shutdown."""

    def __init__(self, spawn: Spawn, ring_capacity: int = 4096) -> None:
        self.ring_capacity = ring_capacity
        self._spawn = spawn  # watchers run in the daemon's task group
        self.watchers: dict[str, Watcher] = {}

    async def create(self, path: Path, recursive: bool, *, expires: bool = True) -> Watcher:
        self._expire_idle()
        if len(self.watchers) >= MAX_WATCHERS:
            raise DaemonError(
                Code.CONFLICT, f"too many watchers (limit {MAX_WATCHERS}, set by TOOLBOX_MAX_WATCHERS): "
                "delete one with DELETE /watch/{id} first"
            )
        with os_errors(str(path)):
            await anyio.to_thread.run_sync(os.stat, path)
        if recursive and await anyio.to_thread.run_sync(count_directories, path, MAX_RECURSIVE_DIRS) > MAX_RECURSIVE_DIRS:
            raise DaemonError(
                Code.BAD_REQUEST,
                f"{path} holds more than {MAX_RECURSIVE_DIRS} directories, too many to watch recursively: "
                "watch a subdirectory, or without recursive",
            )
        watcher = Watcher(uuid.uuid4().hex, path, recursive, EventRing(self.ring_capacity))
        if not expires:
            watcher.last_read = float("inf")
        watcher.task = self._spawn(watcher.run(), name=f"watch {path}")
        self.watchers[watcher.id] = watcher
        # Answer once the kernel watches are in place (a huge recursive tree may take long:
        # then answer anyway, and events start once it is armed).
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(watcher.ready.wait(), READY_TIMEOUT)
        return watcher

    def get(self, watcher_id: str) -> Watcher:
        watcher = self.watchers.get(watcher_id)
        if watcher is None:
            raise DaemonError(Code.NOT_FOUND, f"watcher {watcher_id!r} not found")
        if watcher.last_read != float("inf"):
            watcher.last_read = time.monotonic()
        return watcher

    async def delete(self, watcher_id: str) -> None:
        watcher = self.watchers.pop(watcher_id, None)
        if watcher is None:
            raise DaemonError(Code.NOT_FOUND, f"watcher {watcher_id!r} not found")
        await self._stop(watcher)

    async def _stop(self, watcher: Watcher) -> None:
        watcher.stop.set()
        if watcher.task is not None:
            with anyio.move_on_after(10):
                await watcher.task.wait()
            watcher.task.cancel()  # (a no-op once it has ended)

    def _expire_idle(self) -> None:
        now = time.monotonic()
        for watcher_id, watcher in list(self.watchers.items()):
            if now - watcher.last_read > IDLE_EXPIRY:
                del self.watchers[watcher_id]
                watcher.stop.set()

    async def close(self) -> None:
        watchers, self.watchers = list(self.watchers.values()), {}
        for watcher in watchers:
            await self._stop(watcher)
