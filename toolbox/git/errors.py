"""Turns git's own words into Daytona's git error codes (toolbox-api.md §3.2).

git's messages are stable in the C locale (GitPython runs git with LC_ALL=C); the first
matching rule wins, so more specific failures come before the generic transport ones.
"""

from __future__ import annotations

import re

from toolbox.errors import Code, DaemonError
from toolbox.git.runner import GitResult

_RULES: tuple[tuple[Code, tuple[str, ...]], ...] = (
    (Code.GIT_AUTH_FAILED, (
        "authentication failed",
        "could not read username",
        "could not read password",
        "terminal prompts disabled",
        "invalid username or password",
        "http basic: access denied",
        "permission denied (publickey",
        "requested url returned error: 401",
    )),
    (Code.FORBIDDEN, (
        "requested url returned error: 403",
    )),
    (Code.GIT_REPO_NOT_FOUND, (
        "repository not found",
        "requested url returned error: 404",
        "does not appear to be a git repository",
        "not a git repository",
        "can only be used inside a git repository",
    )),
    (Code.GIT_REMOTE_REJECTED, (
        "[remote rejected]",
        "hook declined",
        "protected branch",
    )),
    (Code.GIT_PUSH_REJECTED, (
        "non-fast-forward",
        "(fetch first)",
        "updates were rejected",
        "stale info",
        "[rejected]",
    )),
    (Code.GIT_DIRTY_WORKTREE, (
        "would be overwritten",
        "please commit your changes or stash them",
        "you have unstaged changes",
        "your index contains uncommitted changes",
        "needs merge",
    )),
    (Code.GIT_MERGE_CONFLICT, (
        "not possible to fast-forward",
        "diverging branches",
        "automatic merge failed",
        "merge conflict",
    )),
    (Code.GIT_BRANCH_EXISTS, (
        "already exists",
    )),
    (Code.GIT_BRANCH_NOT_FOUND, (
        "not found in upstream",
        "couldn't find remote ref",
        "src refspec",
        "invalid reference:",
    )),
    (Code.GIT_TRANSPORT_FAILED, (
        "could not resolve host",
        "could not resolve proxy",
        "failed to connect",
        "couldn't connect to server",
        "connection refused",
        "connection timed out",
        "operation too slow",  # curl's low-speed abort: the stall timeout
        "not responding",  # ssh: "Timeout, server ... not responding."
        "operation timed out",
        "network is unreachable",
        "name or service not known",
        "ssl certificate problem",
        "server certificate verification failed",
        "ssl_connect",
        "gnutls",
        "host key verification failed",
        "the remote end hung up unexpectedly",
        "could not read from remote repository",
        "early eof",
        "rpc failed",
        "requested url returned error: 5",
        "unable to access",
    )),
    (Code.NOT_FOUND, (
        "unknown revision",
        "bad revision",
        "not a valid object name",
        "invalid object name",
        "reference is not a tree",
        "needed a single revision",
        "no such remote",
        "does not exist",
    )),
    (Code.FORBIDDEN, (
        "permission denied",
    )),
    (Code.INSUFFICIENT_STORAGE, (
        "no space left on device",
    )),
)

_LOCAL_REPO_MISSING = re.compile(r"repository '.*' does not exist", re.IGNORECASE)
_LOCKED = re.compile(r"unable to create '.*\.lock': file exists", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(\w+://[^/\s:@]+):[^@/\s]+@")


def redact_urls(text: str) -> str:
    """`https://user:secret@host` → `https://user:xxxxx@host`, as Go's url.Redacted does."""
    return _URL_PASSWORD.sub(r"\1:xxxxx@", text)


def classify(output: str) -> Code:
    lowered = output.lower()
    if _LOCKED.search(output):
        return Code.CONFLICT
    if _LOCAL_REPO_MISSING.search(output):
        return Code.GIT_REPO_NOT_FOUND
    for code, needles in _RULES:
        if any(needle in lowered for needle in needles):
            if code is Code.GIT_BRANCH_EXISTS and "branch" not in lowered:
                return Code.CONFLICT  # "destination path ... already exists", remote exists, ...
            return code
    return Code.BAD_REQUEST


_STALLED = re.compile(r"operation too slow|server .* not responding", re.IGNORECASE)
_STALL_HINT = (
    "(the transfer stalled: the remote sent no data for longer than the stall timeout; "
    "the daemon's TOOLBOX_GIT_STALL_TIMEOUT sets it, in seconds, 0 = no limit)"
)

_AUTH_HINT = (
    "(the remote needs credentials: pass username and password/token with this call, "
    "or store them once with dangerously_authenticate)"
)


def git_error(operation: str, result: GitResult, code: Code | None = None) -> DaemonError:
    """A DaemonError carrying git's own explanation, classified unless `code` is given."""
    lines = [
        line for line in redact_urls(result.output_tail()).splitlines()
        # Noise: the always-failing askpass (how prompts are refused) and clone progress.
        if not line.startswith(("error: unable to read askpass response", "Cloning into "))
    ]
    output = "\n".join(lines) or f"git exited with status {result.status}"
    code = code or classify(output)
    if _LOCKED.search(output):
        output += "\n(another git operation is running in this repository; retry when it has finished)"
    if code is Code.GIT_AUTH_FAILED:
        output += "\n" + _AUTH_HINT
    if _STALLED.search(output):
        output += "\n" + _STALL_HINT
    return DaemonError(code, f"{operation} failed: {output}")
