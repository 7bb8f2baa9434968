"""Sessions: persistent shells whose commands run one after another (toolbox-api.md §8).

Nothing here knows HTTP. State on disk, under `<state_dir>/sessions/<session>/`:
`session.json`, and per command `commands/<cmdId>/command.json` (id, command, exit code)
plus `output.log` (the raw log with stream markers, the spill file of its OutputStore).
A restarted daemon reads them back: the shells are gone, the logs stay readable.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import anyio

from toolbox.config import Settings
from toolbox.errors import Code, DaemonError
from toolbox.process import groups
from toolbox.process.output import OutputStore
from toolbox.process.session.logs import STDERR, STDOUT
from toolbox.process.session.shell import SessionShell
from toolbox.tasks import BackgroundTask, Spawn

log = logging.getLogger("toolbox.process")

ENTRYPOINT = "entrypoint"
ENTRYPOINT_COMMAND = "entrypoint_command"


def _write_json(path: Path, data: dict[str, object]) -> None:
    """Small metadata file, replaced atomically (a crash never leaves half a file)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


class _Done:
    """Stands in for the `done` event of a finished command."""

    def is_set(self) -> bool:
        return True

    def set(self) -> None:
        pass

    async def wait(self) -> None:
        return None


DONE = _Done()


@dataclass(eq=False)
class Command:
    id: str
    command: str
    dir: Path
    output: OutputStore
    run_async: bool = False
    suppress_input_echo: bool = False
    exit_code: int | None = None
    seq: int = 0  # position in the session, to list commands in order after a restart
    started_ticks: int | None = None  # /proc start-time units; None while queued
    stdin_fd: int | None = None  # daemon's end of the stdin FIFO (async commands)
    done: anyio.Event | "_Done" = field(default_factory=anyio.Event)
    _input_lock: anyio.Lock | None = None

    @property
    def input_lock(self) -> anyio.Lock:
        if self._input_lock is None:
            self._input_lock = anyio.Lock()
        return self._input_lock

    @property
    def finished(self) -> bool:
        return self.exit_code is not None

    def save(self) -> None:
        data: dict[str, object] = {"id": self.id, "command": self.command, "seq": self.seq}
        if self.exit_code is not None:
            data["exitCode"] = self.exit_code
        _write_json(self.dir / "command.json", data)

    def finish(self, exit_code: int) -> None:
        """Record the exit code (after all output), then let followers drain and stop."""
        self.exit_code = exit_code
        try:
            self.save()
        except OSError as exc:
            log.warning("cannot save command %s: %s", self.id, exc)
        self.output.close()
        self.output.release_memory()
        self.done.set()
        # Waiters are woken; a finished command keeps no loop objects (sessions may run
        # hundreds of thousands of commands).
        self.done = DONE
        self._input_lock = None

    def wire(self) -> dict[str, object]:
        data: dict[str, object] = {"id": self.id, "command": self.command}
        if self.exit_code is not None:
            data["exitCode"] = self.exit_code
        return data


class Session:
    def __init__(self, session_id: str, directory: Path, shell: SessionShell | None) -> None:
        self.id = session_id
        self.dir = directory
        self.shell = shell
        self.commands: dict[str, Command] = {}
        self.deleted = False
        self._queue_send, self._queue_receive = anyio.create_memory_object_stream[Command](1_000_000)
        self.worker: BackgroundTask | None = None

    @property
    def ended(self) -> bool:
        return self.shell is None or not self.shell.alive

    def wire(self) -> dict[str, object]:
        return {"sessionId": self.id, "commands": [c.wire() for c in self.commands.values()]}

    def enqueue(self, command: Command) -> None:
        self._queue_send.send_nowait(command)

    async def work(self) -> None:
        """Run queued commands strictly one after another in the session shell."""
        async with self._queue_receive:
            async for command in self._queue_receive:
                await self._run(command)

    async def _run(self, command: Command) -> None:
        stdin_fifo = command.dir / "stdin" if command.run_async else None
        try:
            if self.shell is None or not self.shell.alive or self.deleted:
                command.output.append(STDERR + b"session shell has exited; command not run\n")
                command.finish(-1)
                return
            command.started_ticks = groups.clock_ticks_now()
            if stdin_fifo is not None:
                os.mkfifo(stdin_fifo, 0o600)
                # O_RDWR: never blocks, and keeps a writer so the command sees no early EOF.
                command.stdin_fd = os.open(stdin_fifo, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            code = await self.shell.run(command.id, command.command, command.dir, command.output, stdin_fifo)
            self._close_stdin(command)
            command.finish(code)
        except Exception as exc:  # noqa: BLE001 - a command must always end
            log.exception("session %s command %s failed", self.id, command.id)
            self._close_stdin(command)
            if not command.output.closed:
                command.output.append(STDERR + f"toolbox: {exc}\n".encode())
            if not command.finished:
                command.finish(-1)
        finally:
            if stdin_fifo is not None:
                try:
                    os.unlink(stdin_fifo)
                except OSError:
                    pass

    def _close_stdin(self, command: Command) -> None:
        fd, command.stdin_fd = command.stdin_fd, None
        if fd is not None:
            anyio.notify_closing(fd)  # wakes an input writer blocked on a full pipe
            os.close(fd)

    def stop_accepting(self) -> None:
        self._queue_send.close()


class SessionManager:
    def __init__(self, settings: Settings, spawn: Spawn) -> None:
        self.settings = settings
        self.root = settings.state_dir / "sessions"
        self.sessions: dict[str, Session] = {}
        # Sessions outlive requests: their workers, disposals and the zombie reaper run in
        # the daemon's task group, which cancels and awaits them when it stops.
        self._spawn = spawn

    # -- lifecycle ---------------------------------------------------------------------------

    async def startup(self) -> None:
        await anyio.to_thread.run_sync(self._restore)
        entrypoint = os.environ.get("TOOLBOX_ENTRYPOINT", "").strip()
        if entrypoint:
            session = await self._start_session(ENTRYPOINT)
            self._submit(session, entrypoint, run_async=True, suppress_input_echo=True, cmd_id=ENTRYPOINT_COMMAND)
        if groups.reaping_wanted():
            if os.getpid() != 1:
                groups.become_subreaper()
            self._spawn(groups.ZombieReaper().run(), name="zombie reaper")

    async def shutdown(self) -> None:
        # The shells die now; their workers and pumps are then cancelled with the task group.
        for session in list(self.sessions.values()):
            if session.shell is not None and session.shell.alive:
                groups.kill_tree_now(session.shell.pid)

    def _session_dir(self, session_id: str) -> Path:
        # Any id is allowed on the wire; on disk it is percent-encoded, behind a prefix
        # so "." and ".." stay plain names.
        return self.root / ("s-" + quote(session_id, safe=""))

    def _restore(self) -> None:
        """Read back sessions of an earlier daemon run: ended, logs readable."""
        entry_dir = self._session_dir(ENTRYPOINT)
        if entry_dir.exists():
            shutil.rmtree(entry_dir, ignore_errors=True)
        if not self.root.is_dir():
            return
        for directory in sorted(self.root.iterdir()):
            if directory.name.startswith(".deleted-"):
                shutil.rmtree(directory, ignore_errors=True)
                continue
            try:
                meta = json.loads((directory / "session.json").read_text())
                session = Session(str(meta["sessionId"]), directory, shell=None)
            except (OSError, ValueError, KeyError, TypeError):
                continue
            commands_dir = directory / "commands"
            entries = []
            for cmd_dir in commands_dir.iterdir() if commands_dir.is_dir() else ():
                try:
                    data = json.loads((cmd_dir / "command.json").read_text())
                    entries.append((int(data.get("seq", 0)), cmd_dir, data))
                except (OSError, ValueError):
                    continue
            for _seq, cmd_dir, data in sorted(entries, key=lambda e: e[0]):
                log_path = cmd_dir / "output.log"
                if not log_path.exists():
                    log_path.touch()
                command = Command(str(data["id"]), str(data.get("command", "")), cmd_dir, OutputStore.reopen(log_path))
                # A command cut off by the restart never got its exit code: -1, as for a
                # command whose wait failed.
                command.exit_code = int(data["exitCode"]) if "exitCode" in data else -1
                command.done = DONE
                session.commands[command.id] = command
            session.stop_accepting()
            self.sessions[session.id] = session

    # -- sessions ----------------------------------------------------------------------------

    def get(self, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None or session.deleted:
            raise DaemonError(Code.NOT_FOUND, "session not found")
        return session

    def entrypoint(self) -> Session:
        """The entrypoint session; an empty one when the daemon was started without."""
        session = self.sessions.get(ENTRYPOINT)
        return session if session is not None else Session(ENTRYPOINT, self._session_dir(ENTRYPOINT), None)

    def entrypoint_command(self) -> Command | None:
        """The entrypoint's own command (whose logs `/entrypoint/logs` serves); None when
        the daemon was started without an entrypoint, whose logs are then empty."""
        return self.entrypoint().commands.get(ENTRYPOINT_COMMAND)

    def list(self) -> list[Session]:
        return [s for s in self.sessions.values() if s.id != ENTRYPOINT and not s.deleted]

    async def create(self, session_id: str) -> Session:
        if session_id == ENTRYPOINT:
            raise DaemonError(Code.BAD_REQUEST, f"session id '{ENTRYPOINT}' is reserved")
        if session_id in self.sessions:
            raise DaemonError(Code.CONFLICT, "session already exists")
        if "\x00" in session_id or "/" in session_id:
            # A "/" could never be addressed again: routes split the path on it.
            raise DaemonError(Code.BAD_REQUEST, "session id must not contain '/' or NUL bytes")
        if len(self._session_dir(session_id).name) > 240:
            raise DaemonError(Code.BAD_REQUEST, "session id is too long (at most ~80 characters when not ASCII)")
        return await self._start_session(session_id)

    async def _start_session(self, session_id: str) -> Session:
        directory = self._session_dir(session_id)
        if directory.exists():
            await anyio.to_thread.run_sync(shutil.rmtree, directory, True)
        (directory / "commands").mkdir(parents=True)
        _write_json(directory / "session.json", {"sessionId": session_id})
        try:
            shell = await SessionShell.start(self.settings.workdir, dict(os.environ), self._spawn)
        except OSError as exc:
            shutil.rmtree(directory, ignore_errors=True)
            raise DaemonError(Code.INTERNAL_SERVER_ERROR, f"cannot start the session shell: {exc}") from exc
        session = Session(session_id, directory, shell)
        self.sessions[session_id] = session
        session.worker = self._spawn(session.work(), name=f"session {session_id}")
        return session

    async def delete(self, session_id: str) -> None:
        if session_id == ENTRYPOINT:
            raise DaemonError(Code.BAD_REQUEST, f"session '{ENTRYPOINT}' cannot be deleted")
        session = self.get(session_id)
        session.deleted = True
        session.stop_accepting()
        del self.sessions[session_id]
        # Out of the way at once, so the id can be reused while the old shell still dies.
        trash = self.root / f".deleted-{uuid.uuid4().hex}"
        try:
            os.rename(session.dir, trash)
            session.dir = trash
        except OSError as exc:
            log.warning("cannot move %s aside: %s", session.dir, exc)
        # Kill first (TERM, then KILL after the grace period), then forget the files; the
        # response does not wait for slow-dying processes (Daytona reaps in the background).
        self._spawn(self._dispose(session), name=f"dispose of session {session_id}")

    async def _dispose(self, session: Session) -> None:
        if session.shell is not None:
            await session.shell.kill()
        if session.worker is not None:
            with anyio.move_on_after(groups.DEFAULT_GRACE):
                await session.worker.wait()
        await anyio.to_thread.run_sync(shutil.rmtree, session.dir, True)

    # -- commands ----------------------------------------------------------------------------

    def _writable(self, session_id: str) -> Session:
        if session_id == ENTRYPOINT:
            raise DaemonError(Code.BAD_REQUEST, f"session '{ENTRYPOINT}' is read-only")
        session = self.get(session_id)
        if session.ended:
            raise DaemonError(
                Code.SESSION_ENDED,
                "session shell has exited (an `exit` or a daemon restart); delete the session and create a new one",
            )
        return session

    def execute(
        self, session_id: str, command: str, *, run_async: bool, suppress_input_echo: bool
    ) -> tuple[Session, Command]:
        if not command.strip():
            raise DaemonError(Code.BAD_REQUEST, "command cannot be empty or whitespace-only")
        session = self._writable(session_id)
        return session, self._submit(session, command, run_async=run_async, suppress_input_echo=suppress_input_echo)

    def _submit(
        self, session: Session, text: str, *, run_async: bool, suppress_input_echo: bool, cmd_id: str | None = None
    ) -> Command:
        cmd_id = cmd_id or str(uuid.uuid4())
        directory = session.dir / "commands" / cmd_id
        directory.mkdir(parents=True)
        command = Command(
            cmd_id,
            text,
            directory,
            OutputStore(directory / "output.log"),
            run_async=run_async,
            suppress_input_echo=suppress_input_echo,
            seq=len(session.commands),
        )
        command.save()
        session.commands[cmd_id] = command
        session.enqueue(command)
        return command

    async def wait(self, session: Session, command: Command) -> None:
        await command.done.wait()
        if session.deleted:
            raise DaemonError(Code.BAD_REQUEST, "session cancelled")

    def command(self, session_id: str, command_id: str) -> tuple[Session, Command]:
        session = self.entrypoint() if session_id == ENTRYPOINT else self.get(session_id)
        command = session.commands.get(command_id)
        if command is None:
            raise DaemonError(Code.NOT_FOUND, "command not found")
        return session, command

    async def send_input(self, session_id: str, command_id: str, data: str) -> None:
        if session_id == ENTRYPOINT:
            raise DaemonError(Code.BAD_REQUEST, f"session '{ENTRYPOINT}' does not accept input")
        session, command = self.command(session_id, command_id)
        if command.finished:
            raise DaemonError(Code.COMMAND_ALREADY_COMPLETED, "command already completed")
        if session.ended:
            raise DaemonError(Code.SESSION_ENDED, "session shell has exited")
        if command.started_ticks is None:
            raise DaemonError(
                Code.CONFLICT, "command has not started yet (an earlier command of the session still runs)"
            )
        if not command.run_async:
            raise DaemonError(
                Code.CONFLICT,
                "command was run synchronously and reads no input (its stdin is /dev/null); use runAsync",
            )
        if not data.endswith("\n"):
            data += "\n"
        payload = data.encode()
        async with command.input_lock:
            view = memoryview(payload)
            while view:
                fd = command.stdin_fd
                if fd is None:
                    raise DaemonError(Code.COMMAND_ALREADY_COMPLETED, "command already completed")
                try:
                    view = view[os.write(fd, view) :]
                except BlockingIOError:
                    try:
                        await anyio.wait_writable(fd)
                    except anyio.ClosedResourceError:
                        raise DaemonError(Code.COMMAND_ALREADY_COMPLETED, "command already completed") from None
                except BrokenPipeError:
                    raise DaemonError(Code.COMMAND_ALREADY_COMPLETED, "command already completed") from None
            if not command.suppress_input_echo and not command.output.closed:
                command.output.append(STDOUT + payload)

    def send_signal(self, session_id: str, command_id: str, sig: signal.Signals) -> int:
        """Signal the processes the running command started; returns how many."""
        if session_id == ENTRYPOINT and session_id not in self.sessions:
            raise DaemonError(Code.NOT_FOUND, "session not found")
        session, command = self.command(session_id, command_id)
        if command.finished:
            raise DaemonError(Code.COMMAND_ALREADY_COMPLETED, "command already completed")
        if command.started_ticks is None or session.shell is None:
            raise DaemonError(Code.CONFLICT, "command has not started yet (an earlier command of the session still runs)")
        table = groups.process_table()
        shell = session.shell.pid
        # Descendants of the shell, plus members of its group that were orphaned (double
        # forks), started since the command began: that is what the command started.
        candidates = dict.fromkeys([*groups.descendants(shell, table), *groups.group_members(shell, table)])
        targets = [
            pid
            for pid in candidates
            if pid != shell and table[pid][3] >= command.started_ticks - 1 and table[pid][2] not in ("Z", "X")
        ]
        if not targets:
            raise DaemonError(
                Code.CONFLICT,
                "the command has no process of its own to signal (shell builtins run inside the "
                "session shell); delete the session to stop it",
            )
        # Parents first would let a shell loop respawn children; signal leaves first.
        return groups.signal_pids(reversed(targets), sig)
