"""`.dockerignore` files, as docker reads them, for the project's own builds: what a build
context holds is what BuildKit would send, so an image built here has no `__pycache__`,
no `node_modules` and nothing else of the checkout that its ignore file leaves out.

Docker's rules (moby's patternmatcher): one pattern a line, `#` comments, blank lines
skipped; a pattern is cleaned (no leading or trailing `/`); `*` and `?` never match `/`,
`**` matches any number of directories, `[...]` is a class; `!` makes an exception. A path
is excluded when the last pattern that matches it or one of its parent directories is not
an exception.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pattern:
    text: str  # cleaned
    regex: re.Pattern[str]
    exception: bool

    def may_match_below(self, rel_dir: str) -> bool:
        """Whether a path inside the directory `rel_dir` could match: its components match
        the pattern's first ones, up to a `**` that could match anything."""
        parts = self.text.split("/")
        for index, component in enumerate(rel_dir.split("/")):
            if index >= len(parts) - 1 or "**" in parts[index]:
                return "**" in parts[min(index, len(parts) - 1)]
            if not _translate(parts[index]).match(component):
                return False
        return True


def _translate(pattern: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):  # `**/`: any number of directories, none included
                out.append("(?:.*/)?")
                i += 1
            else:
                out.append(".*")
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1:end]
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]")
                i = end
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


def parse(text: str) -> list[Pattern]:
    patterns = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        line = line[1:].strip() if exception else line
        cleaned = posixpath.normpath(line).strip("/")
        if cleaned in ("", "."):
            continue
        patterns.append(Pattern(cleaned, _translate(cleaned), exception))
    return patterns


def excluded(patterns: list[Pattern], rel: str) -> bool:
    """Whether the context path `rel` (relative, `/`-separated) is left out."""
    parts = rel.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    matched = False
    for pattern in patterns:
        if pattern.exception != matched:
            continue  # an exception only matters to an excluded path, and the other way round
        if any(pattern.regex.match(path) for path in candidates):
            matched = not pattern.exception
    return matched


def stage(source: Path, patterns: list[Pattern], dest: Path) -> int:
    """Copy what of `source` the patterns keep into the existing directory `dest` (modes and
    symlinks as they are; nothing is followed); returns the number of files copied.
    Directories are walked only while an exception could bring something back below them."""
    copied = 0
    exceptions = [p for p in patterns if p.exception]
    for dirpath, dirnames, filenames in os.walk(source):
        rel_dir = os.path.relpath(dirpath, source)
        rel_dir = "" if rel_dir == "." else rel_dir
        keep_dirs = []
        for name in sorted(dirnames):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if os.path.islink(os.path.join(dirpath, name)):
                filenames.append(name)  # a symlink to a directory is copied as the link
            elif not excluded(patterns, rel) or any(p.may_match_below(rel) for p in exceptions):
                keep_dirs.append(name)
        dirnames[:] = keep_dirs
        for name in sorted(filenames):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if excluded(patterns, rel):
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISLNK(st.st_mode) or stat.S_ISREG(st.st_mode):
                shutil.copy2(os.path.join(dirpath, name), target, follow_symlinks=False)
                copied += 1
    return copied
