"""Parses `git status --porcelain=v2 --branch -z` into Daytona's `GitStatus` shape."""

from __future__ import annotations

from dataclasses import dataclass, field

# FileStatus.staging / .worktree values (the SDK's `Status` enum; note the spaces).
UNMODIFIED = "Unmodified"
UNTRACKED = "Untracked"
_STATUS_OF_LETTER = {
    ".": UNMODIFIED,
    "M": "Modified",
    "T": "Modified",  # type change (file <-> symlink): go-git reports it as modified
    "A": "Added",
    "D": "Deleted",
    "R": "Renamed",
    "C": "Copied",
    "U": "Updated but unmerged",
}


@dataclass
class FileEntry:
    name: str
    staging: str
    worktree: str
    extra: str = ""

    def wire(self) -> dict[str, str]:
        return {"name": self.name, "extra": self.extra, "staging": self.staging, "worktree": self.worktree}


@dataclass
class RepoStatus:
    current_branch: str = "HEAD"
    detached: bool = False
    upstream: str = ""
    ahead: int = 0
    behind: int = 0
    files: list[FileEntry] = field(default_factory=list)

    def wire(self) -> dict[str, object]:
        return {
            "currentBranch": self.current_branch,
            "fileStatus": [entry.wire() for entry in sorted(self.files, key=lambda e: e.name)],
            # Published = the upstream's remote-tracking ref exists (Daytona asks
            # `rev-parse @{upstream}`, which fails for a configured but missing ref).
            "branchPublished": bool(self.upstream),
            "ahead": self.ahead,
            "behind": self.behind,
            "detached": self.detached,
            "upstream": self.upstream,
        }


def _letter(code: str) -> str:
    return _STATUS_OF_LETTER.get(code, "Modified")


def parse_porcelain_v2(output: str) -> RepoStatus:
    status = RepoStatus()
    configured_upstream = ""
    has_ab = False
    records = output.split("\0")
    index = 0
    while index < len(records):
        record = records[index]
        index += 1
        if not record:
            continue
        kind = record[0]
        if kind == "#":
            key, _, value = record[2:].partition(" ")
            if key == "branch.head":
                status.detached = value == "(detached)"
                status.current_branch = "HEAD" if status.detached else value
            elif key == "branch.upstream":
                configured_upstream = value
            elif key == "branch.ab":
                has_ab = True
                ahead, _, behind = value.partition(" ")
                status.ahead = int(ahead.lstrip("+") or 0)
                status.behind = int(behind.lstrip("-") or 0)
        elif kind == "1":
            fields = record.split(" ", 8)
            xy = fields[1]
            status.files.append(FileEntry(fields[8], _letter(xy[0]), _letter(xy[1])))
        elif kind == "2":
            fields = record.split(" ", 9)
            xy = fields[1]
            original = records[index] if index < len(records) else ""
            index += 1
            status.files.append(FileEntry(fields[9], _letter(xy[0]), _letter(xy[1]), extra=original))
        elif kind == "u":
            fields = record.split(" ", 10)
            xy = fields[1]
            status.files.append(FileEntry(fields[10], _letter(xy[0]), _letter(xy[1])))
        elif kind == "?":
            status.files.append(FileEntry(record[2:], UNTRACKED, UNTRACKED))
        # "!" (ignored) entries are not requested.
    if has_ab:
        status.upstream = configured_upstream
    return status
