"""The SDK's md5 of a build context, recomputed from what an upload holds.

The SDK names an upload `{organization}/{md5}/context.tar` and skips the upload when
that key exists (control-plane-api.md §4.3). The storage's credentials are shared by
every organization, so anyone can put an object at another organization's key; the
build trusts a context only if its content hashes to the name it is used by.

The SDK hashes `archive_path`, then for a file its content, for a directory every file's
path (relative to the directory) and content, and every empty directory's path, in
`os.walk` order. That order is the client file system's listing order (ext4: hash
order, tmpfs: reverse creation order, ...), which a tar (sorted by name) does not keep,
so the orders a directory may have been walked in are searched, most likely first, with
md5 states shared between orders that have a prefix in common, within a budget.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The search's budget: orders tried and bytes hashed (beyond one pass over the content).
MAX_ORDERS = 20_000
MAX_EXTRA_BYTES = 1 << 30
MAX_FEEDS = 5_000_000  # pieces folded in, over every order (CPU, whatever the sizes)
SMALL_FILE = 1 << 20  # contents up to this size are hashed from memory, not read again
MAX_CACHED = 64 << 20


class Unverifiable(Exception):
    """The search ran out of budget: nothing says the content is the SDK's, or is not."""


@dataclass
class Tree:
    """A directory of a context as os.walk sees it: files (relative path, where its content
    is on disk) and subdirectories."""

    rel: str  # relative to the context's root directory, "." for the root
    files: list[tuple[str, Path]] = field(default_factory=list)
    dirs: list[Tree] = field(default_factory=list)
    opaque: int = 0  # symlinks to directories: listed (not empty), never walked into

    def empty(self) -> bool:
        return not self.files and not self.dirs and not self.opaque


class _Budget:
    def __init__(self) -> None:
        self.bytes = MAX_EXTRA_BYTES
        self.orders = MAX_ORDERS
        self.feeds = MAX_FEEDS
        self.cache: dict[Path, bytes] = {}
        self.cached = 0

    def feed(self, h: Any, piece: tuple[str, Path]) -> None:
        name, path = piece
        self.feeds -= 1
        if self.feeds < 0:
            raise Unverifiable("feeds")
        h.update(name.encode())
        content = self.cache.get(path)
        if content is not None:
            h.update(content)
            return
        size = os.stat(path).st_size  # a symlink's target: the SDK reads through it
        self.bytes -= size
        if self.bytes < 0:
            raise Unverifiable("hashing")
        if size <= SMALL_FILE and self.cached + size <= MAX_CACHED:
            content = path.read_bytes()
            self.cache[path] = content
            self.cached += size
            h.update(content)
            return
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)


def _permutations(h: Any, items: list[Any], step: Any) -> Iterator[Any]:
    """Every order of `items`, each folded into a copy of `h` by `step(h, item)` (which yields
    the states after the item: one for a file, one per inner order for a directory)."""
    if not items:
        yield h
        return
    for index, item in enumerate(items):
        rest = items[:index] + items[index + 1:]
        for after in step(h.copy(), item):
            yield from _permutations(after, rest, step)


def _walks(h: Any, tree: Tree, budget: _Budget) -> Iterator[Any]:
    """The md5 states after os.walk has visited `tree`, for every listing order."""
    if tree.empty():
        h.update(tree.rel.encode())
        yield h
        return

    def file_step(state: Any, piece: tuple[str, Path]) -> Iterator[Any]:
        budget.feed(state, piece)
        yield state

    def dir_step(state: Any, sub: Tree) -> Iterator[Any]:
        yield from _walks(state, sub, budget)

    for after_files in _permutations(h, tree.files, file_step):
        yield from _permutations(after_files, tree.dirs, dir_step)


def _ordered(tree: Tree, reverse: bool) -> Tree:
    return Tree(tree.rel, sorted(tree.files, reverse=reverse),
                [_ordered(d, reverse) for d in sorted(tree.dirs, key=lambda d: d.rel, reverse=reverse)],
                tree.opaque)


def matches(expected: str, archive_path: str, content: Path | Tree) -> bool:
    """Whether the SDK would have named this content `expected` (a file's content on disk,
    or a directory's tree). Unverifiable when the orders could not all be tried."""
    head = hashlib.md5(archive_path.encode())
    budget = _Budget()
    if isinstance(content, Path):
        budget.feed(head, ("", content))
        return head.hexdigest() == expected
    # Sorted and reverse-sorted first (creation order on many file systems), then the rest.
    for tree in (_ordered(content, False), _ordered(content, True)):
        if next(_walks(head.copy(), tree, budget)).hexdigest() == expected:
            return True
    for state in _walks(head.copy(), _ordered(content, False), budget):
        if state.hexdigest() == expected:
            return True
        budget.orders -= 1
        if budget.orders < 0:
            raise Unverifiable("orders")
    return False
