"""Runs the real `git` CLI (through GitPython's command wrapper) off the event loop.

Every invocation is non-interactive: no terminal prompts, no askpass dialogs, no editor,
no pager, stdin from /dev/null, ssh in batch mode. Per-call credentials reach git only
through an inline credential helper that reads them from the child's environment, so
they never appear in argv, in `.git/config`, in a remote URL or in the credential store.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass

import anyio

from toolbox.errors import Code, DaemonError, bad_request

# Where the per-call credentials travel: names only ever appear in argv, values in env.
USERNAME_ENV = "TOOLBOX_GIT_USERNAME"
PASSWORD_ENV = "TOOLBOX_GIT_PASSWORD"

# Answers git's `get` with the per-call credentials and ignores `store`/`erase`, so a
# successful call persists nothing and a failed one erases nothing.
_INLINE_HELPER = (
    "!f() { test \"$1\" = get || exit 0; "
    f"printf 'username=%s\\npassword=%s\\n' \"${USERNAME_ENV}\" \"${PASSWORD_ENV}\"; }}; f"
)

# Applied to every command: repositories owned by another user are still served (the
# daemon often runs as root over the user's files), and nothing is paged or coloured.
_BASE_CONFIG = (
    "safe.directory=*",
    "core.pager=cat",
    "color.ui=false",
    "advice.detachedHead=false",
    "credential.interactive=false",
)

# Output kept for error messages; git's last lines are the ones that say what went wrong.
_TAIL_CHARS = 4000

# Seconds a network transfer may go without receiving a byte before it fails; 0 = never.
STALL_TIMEOUT_ENV = "TOOLBOX_GIT_STALL_TIMEOUT"
DEFAULT_STALL_TIMEOUT = 60
# ssh probes a silent server this often (seconds) once the stall timeout allows it.
_SSH_ALIVE_INTERVAL = 15


def stall_timeout_from_env() -> int:
    """`TOOLBOX_GIT_STALL_TIMEOUT` in whole seconds (default 60; 0 or negative = off)."""
    raw = os.environ.get(STALL_TIMEOUT_ENV, "").strip()
    try:
        return max(0, math.ceil(float(raw))) if raw else DEFAULT_STALL_TIMEOUT
    except ValueError:
        return DEFAULT_STALL_TIMEOUT


def _stall_config(timeout: int) -> tuple[str, ...]:
    # curl's low-speed check: below 1 byte/s for `timeout` seconds aborts the transfer
    # (curl error 28), while a slow transfer that keeps moving is never cut off.
    if timeout <= 0:
        return ()
    return ("http.lowSpeedLimit=1", f"http.lowSpeedTime={timeout}")


def _ssh_command(timeout: int) -> str:
    command = "ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new -o ConnectTimeout=30"
    if timeout <= 0:
        return command
    # ssh gives up on a server that stops answering keepalives for about `timeout` seconds.
    interval = min(_SSH_ALIVE_INTERVAL, timeout)
    count = max(1, math.ceil(timeout / interval))
    return f"{command} -o ServerAliveInterval={interval} -o ServerAliveCountMax={count}"


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def redact(self, text: str) -> str:
        text = text.replace(self.password, "***") if self.password else text
        # Usernames are not secret, but long ones are often tokens ("<token>:x-oauth-basic").
        if len(self.username) >= 8:
            text = text.replace(self.username, "***")
        return text


@dataclass(frozen=True)
class GitResult:
    status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.status == 0

    def output_tail(self) -> str:
        text = "\n".join(part.strip() for part in (self.stderr, self.stdout) if part.strip())
        return text[-_TAIL_CHARS:]


def _non_interactive_env(stall: int) -> dict[str, str]:
    never = shutil.which("false") or "/bin/false"
    env = {
        "GIT_TERMINAL_PROMPT": "0",
        # A helper that always fails: git falls back to the (disabled) terminal and stops.
        "GIT_ASKPASS": never,
        "SSH_ASKPASS": never,
        "SSH_ASKPASS_REQUIRE": "never",
        "GCM_INTERACTIVE": "never",
        "GIT_EDITOR": "true",
        "GIT_SEQUENCE_EDITOR": "true",
        "GIT_MERGE_AUTOEDIT": "no",
        "GIT_PAGER": "cat",
        "PAGER": "cat",
        # Status must not take index.lock: it would make concurrent writers fail.
        "GIT_OPTIONAL_LOCKS": "0",
    }
    if not os.environ.get("GIT_SSH_COMMAND") and not os.environ.get("GIT_SSH"):
        env["GIT_SSH_COMMAND"] = _ssh_command(stall)
    return env


class GitRunner:
    """Runs one git command in a worker thread and returns its exit status and output.

    `stall_timeout` (seconds, 0 = off) bounds how long an HTTP(S) or ssh transfer may
    receive nothing; it defaults to `TOOLBOX_GIT_STALL_TIMEOUT`.
    """

    def __init__(self, stall_timeout: int | None = None) -> None:
        self.stall_timeout = stall_timeout_from_env() if stall_timeout is None else max(0, stall_timeout)

    async def run(
        self,
        args: list[str],
        *,
        cwd: str | None = None,
        credentials: Credentials | None = None,
        config: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        stdin: bytes | None = None,
    ) -> GitResult:
        if any("\x00" in arg for arg in args):
            # One check for every call (paths, refs, messages): exec would fail with a 500.
            raise bad_request("git arguments (paths, names, messages) must not contain NUL bytes")
        argv = ["git"]
        for item in (*_BASE_CONFIG, *_stall_config(self.stall_timeout), *config):
            argv += ["-c", item]
        child_env = _non_interactive_env(self.stall_timeout)
        if credentials is not None:
            # An empty value resets the helper list: stored credentials neither answer
            # nor get overwritten by this call's credentials.
            argv += ["-c", "credential.helper=", "-c", f"credential.helper={_INLINE_HELPER}"]
            child_env[USERNAME_ENV] = credentials.username
            child_env[PASSWORD_ENV] = credentials.password
        child_env.update(env or {})
        argv += args
        result = await anyio.to_thread.run_sync(_execute, argv, cwd, child_env, stdin)
        if credentials is not None:
            result = GitResult(result.status, credentials.redact(result.stdout), credentials.redact(result.stderr))
        return result


def _execute(argv: list[str], cwd: str | None, env: dict[str, str], stdin: bytes | None) -> GitResult:
    # GitPython (~45 ms, ~3 MiB) loads on the first git call, in this worker thread.
    try:
        from git.cmd import Git as GitCommand
        from git.exc import GitCommandNotFound
    except ImportError:  # its import runs `git version` and fails when there is no git
        raise DaemonError(Code.INTERNAL_SERVER_ERROR, "git is not installed in the sandbox (no `git` on PATH)") from None

    read_fd: int | None = None
    if stdin is not None:
        # Small inputs only (credential records): they fit in the pipe buffer.
        read_fd, write_fd = os.pipe()
        try:
            os.write(write_fd, stdin)
        finally:
            os.close(write_fd)
    try:
        status, stdout, stderr = GitCommand(cwd).execute(
            argv,
            istream=read_fd,
            with_extended_output=True,
            with_exceptions=False,
            strip_newline_in_stdout=False,
            env=env,
        )
    except GitCommandNotFound:
        raise DaemonError(Code.INTERNAL_SERVER_ERROR, "git is not installed in the sandbox (no `git` on PATH)") from None
    finally:
        if read_fd is not None:
            os.close(read_fd)
    return GitResult(int(status), _valid_text(stdout), _valid_text(stderr))


def _valid_text(value: str | bytes) -> str:
    """GitPython decodes with surrogateescape; JSON needs valid UTF-8 (like Go, use U+FFFD)."""
    text = value if isinstance(value, str) else value.decode("utf-8", "surrogateescape")
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
