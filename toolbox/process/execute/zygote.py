"""A warm `python3` per daemon that forks a clean child for each Python code run.

Starting `python3` costs 50-125 ms (more through a pyenv shim), more than the whole
budget of a code run. So the daemon keeps one interpreter (the script
`zygote_main.py`) that has done its start-up and waits on a private socketpair; each run
is a fork of it with the run's stdio, environment, cwd, argv and a fresh `__main__`
(see that script for what the child resets).

The zygote is started through the same shell, with the same environment and work dir,
as a code run's `python3 -u -`, so it is the same interpreter with the same start-up.
A run only takes this path when it would behave the same as through the shell;
otherwise (`run` answers None) the caller runs it the old way:
- source with a NUL byte or a non-UTF-8 encoding declaration (errors of their own);
- argv the shell would do more with than split on blanks (quotes, `$`, globs, ...);
- a run's `envs` changing a variable read at start-up (PATH, PYTHON*, LC_*, ...);
- no zygote (no `python3`, or it failed to start: retried after RETRY_AFTER seconds).
When the daemon's own environment or the `python3` on its PATH changes, the zygote is
replaced. `TOOLBOX_CODERUN_ZYGOTE=0` turns it off.
"""

from __future__ import annotations

import logging
import math
import os
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from toolbox.errors import Code, DaemonError
from toolbox.process import groups
from toolbox.process.execute.runner import CapturedOutput, Finished

log = logging.getLogger("toolbox.process")

SOURCE = Path(__file__).with_name("zygote_main.py")
ENABLED_ENV = "TOOLBOX_CODERUN_ZYGOTE"
READY_TIMEOUT = 30.0  # seconds for a new zygote to report ready (start-up under load)
RETRY_AFTER = 30.0  # after a zygote failed to start, runs take the shell path this long
MAX_READY_MESSAGE = 4 * 1024 * 1024
STUCK_AFTER = 5.0  # seconds for a zygote to answer a run, or to report a child's exit
WATCH_EVERY = 0.5  # seconds between checks that a running child is still there

# Environment variables that shape the interpreter or the shell at start-up: a run that
# changes one of them needs a fresh `python3`, and a daemon whose own values changed needs
# a new zygote.
_STARTUP_NAMES = frozenset({
    "PATH", "HOME", "LANG", "LANGUAGE", "TZ", "VIRTUAL_ENV",
    "BASH_ENV", "ENV", "ZDOTDIR", "TOOLBOX_SHELL",
})
_STARTUP_PREFIXES = ("LC_", "PYTHON", "PYENV")
# A word the shell passes through unchanged: no quoting, expansion, globbing, comment,
# redirection or zsh `=cmd` expansion can apply to it.
_PLAIN_WORD = re.compile(r"[A-Za-z0-9_./:,+@%-][A-Za-z0-9_./:,+@%=-]*")
_BLANKS = re.compile(r"[ \t]+")
_CODING = re.compile(r"^[ \t\f]*#.*?coding[:=][ \t]*([-\w.]+)", re.ASCII)  # PEP 263


def enabled() -> bool:
    return os.environ.get(ENABLED_ENV, "1") != "0"


def startup_env(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k in _STARTUP_NAMES or k.startswith(_STARTUP_PREFIXES)}


def plain_argv(argv: list[str]) -> list[str] | None:
    """The words the shell makes of `python3 -u - <argv joined by spaces>`, or None when
    it would do more than split them on blanks."""
    words = [word for word in _BLANKS.split(" ".join(argv)) if word]
    return words if all(_PLAIN_WORD.fullmatch(word) for word in words) else None


def _normal_encoding(name: str) -> str:
    """CPython's tokenizer's get_normal_name."""
    head = name[:12].lower().replace("_", "-")
    if head == "utf-8" or head.startswith("utf-8-"):
        return "utf-8"
    if head in ("latin-1", "iso-8859-1", "iso-latin-1") or head.startswith(("latin-1-", "iso-8859-1-", "iso-latin-1-")):
        return "iso-8859-1"
    return name


def source_needs_shell(code: str) -> bool:
    """Source that `python3 -` rejects in its own way: NUL bytes, and an encoding
    declaration other than UTF-8 (on a pipe the tokenizer cannot re-read it)."""
    if "\x00" in code:
        return True
    for line in code.split("\n", 2)[:2]:
        match = _CODING.match(line)
        if match and _normal_encoding(match.group(1)) != "utf-8":
            return True
    return False


def _python3(env: Mapping[str, str]) -> str | None:
    return shutil.which("python3", path=env.get("PATH", os.defpath))


class _Gone(Exception):
    """The zygote is not there any more (it died or was replaced)."""


@dataclass
class _Zygote:
    popen: subprocess.Popen[bytes]  # the shell the zygote runs under, in its own session
    sock: socket.socket
    spawn_env: dict[str, str]
    launcher: str | None  # the `python3` the shell finds (a pyenv shim, a venv's, ...)
    cwd: Path
    ready: bool | None = None  # None until its ready message was read
    # How the shell and launcher changed the environment: applied to every run's.
    changed: dict[str, str] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)

    @property
    def startup(self) -> dict[str, str]:
        return startup_env(self.spawn_env)

    def usable(self) -> bool:
        return self.ready is not False and self.popen.poll() is None

    def environment(self, env: dict[str, str]) -> dict[str, str]:
        """`env` as the interpreter would see it after the shell and the launcher."""
        for name, value in self.changed.items():
            if env.get(name) == self.spawn_env.get(name):
                env[name] = value
        for name in self.removed:
            if env.get(name) == self.spawn_env.get(name):
                env.pop(name, None)
        return env

    def close(self) -> None:
        self.ready = False
        self.sock.close()  # it exits on EOF; the kill is for one that is stuck
        if self.popen.poll() is None:
            groups.signal_group(self.popen.pid, signal.SIGKILL)
            self.popen.poll()


def spawn(cwd: Path) -> _Zygote:
    """Start a zygote (does not wait for it: its start-up runs while the daemon goes on)."""
    env = dict(os.environ)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    # Not `exec`: a command the shell forks gets the environment a run's `python3` got
    # (bash sets `_` and keeps SHLVL raised only for those). The idle shell costs ~1 MiB.
    script = f"python3 -u -c {shlex.quote(SOURCE.read_text())} {theirs.fileno()}\n".encode()
    stdin_read, stdin_write = os.pipe2(os.O_CLOEXEC)
    try:
        popen = subprocess.Popen(
            [groups.default_shell()], stdin=stdin_read, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, cwd=str(cwd), env=env, pass_fds=(theirs.fileno(),),
            start_new_session=True,
        )
        # Smaller than a pipe's buffer: this never blocks.
        os.write(stdin_write, script)
    except BaseException:
        ours.close()
        raise
    finally:
        os.close(stdin_read)
        os.close(stdin_write)
        theirs.close()
    ours.setblocking(False)
    return _Zygote(popen, ours, env, _python3(env), cwd)


async def _read_ready(zygote: _Zygote) -> bool:
    message = b""
    with anyio.move_on_after(READY_TIMEOUT):
        while True:
            try:
                message = zygote.sock.recv(MAX_READY_MESSAGE)
                break
            except BlockingIOError:
                await anyio.wait_readable(zygote.sock)
            except OSError:
                break
    return _take_ready(zygote, message)


def _take_ready(zygote: _Zygote, message: bytes) -> bool:
    if not message.startswith(b"ready\0"):
        return False
    env: dict[str, str] = {}
    for item in message.split(b"\0")[2:]:
        name, sep, value = item.partition(b"=")
        if sep:
            env[os.fsdecode(name)] = os.fsdecode(value)
    zygote.changed = {k: v for k, v in env.items() if zygote.spawn_env.get(k) != v}
    zygote.removed = [k for k in zygote.spawn_env if k not in env]
    return True


def payload(cwd: Path, argv: list[str], env: Mapping[str, str], code: bytes) -> bytes:
    """What the child reads on stdin: NUL-separated header fields, then the code. The
    code's length comes last, so a run cut short is never executed."""
    fields = [b"dtn1", os.fsencode(str(cwd)), b"%d" % len(argv), *map(os.fsencode, argv), b"%d" % len(env)]
    fields += [os.fsencode(k) + b"=" + os.fsencode(v) for k, v in env.items()]
    fields.append(b"%d" % len(code))
    return b"\0".join(fields) + b"\0" + code


async def _send(sock: socket.socket, fds: Iterable[int]) -> None:
    while True:
        try:
            socket.send_fds(sock, [b"run"], list(fds))
            return
        except BlockingIOError:
            await anyio.wait_writable(sock)
        except OSError as exc:  # EPIPE, ECONNRESET, EBADF (closed): it is gone
            raise _Gone() from exc


class _Status:
    """The zygote's report on one run: `pid N`, then `exit <wait status>` (EOF without
    it: the zygote died)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        self.pid: int | None = None
        self.wait_status: int | None = None
        self.fork_error: int | None = None  # an errno: the zygote could not fork
        self.eof = False
        self.stuck = False
        self._pidfd: int | None = None
        self._buffer = b""

    def _take(self, chunk: bytes) -> None:
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            kind, _sep, value = line.partition(b" ")
            if kind == b"pid":
                self.pid = int(value)
            elif kind == b"exit":
                self.wait_status = int(value)
            elif kind == b"fail":
                self.fork_error = int(value)

    def _read_now(self) -> bool:
        """Read what is there; False when the read would block."""
        try:
            chunk = os.read(self.fd, 4096)
        except BlockingIOError:
            return False
        if chunk:
            self._take(chunk)
        else:
            self.eof = True
        return True

    async def _more(self) -> None:
        if not self._read_now():
            await anyio.wait_readable(self.fd)

    @property
    def over(self) -> bool:
        return self.eof or self.wait_status is not None or self.fork_error is not None

    async def started(self) -> None:
        while self.pid is None and not self.over:
            await self._more()

    def _child_exited(self) -> bool:
        """Whether the child is gone, seen through a pidfd of our own (a zygote that is
        stopped would never tell)."""
        if self.pid is None:
            return False
        if self._pidfd is None:
            try:
                self._pidfd = os.pidfd_open(self.pid)
            except OSError:  # already reaped: the zygote's report is on its way
                return True
        poller = select.poll()
        poller.register(self._pidfd, select.POLLIN)
        return bool(poller.poll(0))

    async def finished(self) -> None:
        """Until the zygote reports, or (`stuck`) the child has exited and the zygote
        still says nothing STUCK_AFTER seconds later."""
        while not self.over:
            with anyio.move_on_after(WATCH_EVERY):
                await self._more()
            if not self.over and self._child_exited():
                with anyio.move_on_after(STUCK_AFTER):
                    while not self.over:
                        await self._more()
                self.stuck = not self.over
                return

    def close(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
        os.close(self.fd)

    def kill(self) -> None:
        """SIGKILL the run's whole tree, unless it has already exited."""
        while self.wait_status is None and not self.eof and self._read_now():
            pass
        if self.pid is not None and self.wait_status is None:
            groups.kill_tree_now(self.pid)


def exit_code(status: _Status, output: CapturedOutput) -> int:
    """The exit code the shell reported for `python3`: 128 + the signal when killed by one,
    with the signal's name on stderr as the shell prints it (but for SIGINT and SIGPIPE)."""
    if status.fork_error is not None:
        # As the shell path reports a shell that could not start.
        error = OSError(status.fork_error, os.strerror(status.fork_error))
        os.write(output.fd, f"failed to start shell: {error}".encode())
        return -1
    if status.wait_status is None:
        return -1  # the zygote died before it could tell
    wait_status = status.wait_status
    if os.WIFSIGNALED(wait_status):
        number = os.WTERMSIG(wait_status)
        if number not in (signal.SIGINT, signal.SIGPIPE):
            name = signal.strsignal(number) or f"signal {number}"
            core = " (core dumped)" if os.WCOREDUMP(wait_status) else ""
            os.write(output.fd, f"{name}{core}\n".encode())
        return 128 + number
    return os.waitstatus_to_exitcode(wait_status)


async def _execute(zygote: _Zygote, data: bytes, timeout: float | None) -> Finished:
    output = CapturedOutput()
    code_read, code_write = os.pipe2(os.O_CLOEXEC)
    status_read, status_write = os.pipe2(os.O_CLOEXEC)
    status = _Status(status_read)
    try:
        try:
            await _send(zygote.sock, (code_read, output.fd, status_write))
        finally:
            os.close(code_read)
            os.close(status_write)
        os.set_blocking(code_write, False)

        async def feed() -> None:
            nonlocal code_write
            await groups.write_all(code_write, data)  # False: the child is gone, fine
            os.close(code_write)
            code_write = -1

        stuck = False
        try:
            with anyio.move_on_after(timeout if timeout else math.inf) as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(feed)
                    # It answers at once: one that does not is stuck (stopped, say). No
                    # answer means no fork, so the run can go to another zygote.
                    with anyio.move_on_after(STUCK_AFTER):
                        await status.started()
                    stuck = status.pid is None and not status.over
                    if not stuck:
                        await status.finished()
                    tg.cancel_scope.cancel()
        except BaseException:
            # Cancelled (client gone, daemon stopping): leave nothing running behind.
            with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                await status.started()
            status.kill()
            raise
        if stuck:
            log.warning("the code-run zygote did not answer in %.0f s: replacing it", STUCK_AFTER)
            raise _Gone()
        if scope.cancelled_caught:
            if code_write >= 0:  # a child still reading gets a cut-short run: it runs nothing
                os.close(code_write)
                code_write = -1
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(STUCK_AFTER):
                    await status.started()
                status.kill()
                with anyio.move_on_after(STUCK_AFTER):
                    await status.finished()
                if not status.over or status.stuck:  # killed, but no word from the zygote
                    zygote.close()
            raise DaemonError(Code.PROCESS_EXECUTION_TIMEOUT, "command execution timeout")
        if status.stuck or (status.eof and status.wait_status is None and status.fork_error is None):
            # The zygote died or is stuck: the run's processes go, then the zygote.
            status.kill()
            zygote.close()
        return Finished(exit_code(status, output), output)
    except BaseException:
        output.close()
        raise
    finally:
        if code_write >= 0:
            os.close(code_write)
        status.close()


_prestarted: _Zygote | None = None


def prestart(cwd: Path) -> None:
    """Start a zygote before the daemon is built (a pooled sandbox, before its claim: it
    is warm when the claim comes). Not waited for: an empty pool's create must not pay
    for it; its ready message waits in the socket for the first run."""
    global _prestarted
    if enabled() and _prestarted is None and _python3(os.environ):
        try:
            _prestarted = spawn(cwd)
        except OSError as exc:
            log.warning("could not start the code-run zygote: %s", exc)


class CodeRunZygote:
    """The daemon's zygote: started early, replaced when stale or dead."""

    def __init__(self, workdir: Path) -> None:
        global _prestarted
        self.workdir = workdir
        self._zygote, _prestarted = _prestarted, None
        self._lock = anyio.Lock()
        self._failed: tuple[object, float] | None = None

    async def start(self) -> None:
        """Startup hook: spawn now, so the first run finds it warm (never waits for it)."""
        if enabled():
            self._current()
        else:
            await self.stop()  # a pooled sandbox claimed with TOOLBOX_CODERUN_ZYGOTE=0

    async def stop(self) -> None:
        if self._zygote is not None:
            self._zygote.close()
            self._zygote = None

    def _current(self) -> _Zygote | None:
        """The zygote for the daemon's environment now, spawned if need be."""
        zygote = self._zygote
        startup, launcher = startup_env(os.environ), _python3(os.environ)
        if zygote is not None and not (
            zygote.usable() and zygote.startup == startup and zygote.launcher == launcher
            and zygote.cwd == self.workdir
        ):
            zygote.close()
            self._zygote = zygote = None
        if zygote is None:
            key = (startup, launcher, self.workdir)
            if launcher is None:
                return None  # no python3: the shell path reports it as before
            if self._failed and self._failed[0] == key and time.monotonic() - self._failed[1] < RETRY_AFTER:
                return None
            try:
                zygote = self._zygote = spawn(self.workdir)
            except OSError as exc:
                log.warning("could not start the code-run zygote: %s", exc)
                self._failed = (key, time.monotonic())
                return None
        return zygote

    async def _ready(self, zygote: _Zygote) -> bool:
        if zygote.ready is None:
            async with self._lock:
                if zygote.ready is None:
                    zygote.ready = await _read_ready(zygote)
                    if not zygote.ready:
                        log.warning("the code-run zygote did not start; code runs use the shell")
                        self._failed = ((zygote.startup, zygote.launcher, zygote.cwd), time.monotonic())
        return zygote.ready

    async def run(self, code: str, argv: list[str], envs: Mapping[str, str],
                  timeout: float | None) -> Finished | None:
        """Run Python `code` in a fork of the zygote; None: run it through the shell."""
        if not enabled():
            return None
        words = plain_argv(argv)
        if words is None or source_needs_shell(code):
            return None
        env = dict(os.environ)
        env.update(envs)
        if startup_env(env) != startup_env(os.environ):
            return None
        code_bytes = code.encode()
        for _attempt in range(2):  # a zygote that died since the last run is replaced once
            zygote = self._current()
            if zygote is None or not await self._ready(zygote):
                return None
            data = payload(self.workdir, words, zygote.environment(dict(env)), code_bytes)
            try:
                return await _execute(zygote, data, timeout)
            except _Gone:
                zygote.close()
        return None
