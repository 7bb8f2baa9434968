"""`exec` and `logs`: a command's output as it is written, through a toolbox session.

`exec` runs the command as an async command of a session (a throwaway one unless
--session names one) and follows its log over the toolbox's WebSocket, so output appears
live and stdout and stderr stay apart; the command's exit code becomes the CLI's. Ctrl-C
or --timeout delete the session, which kills everything the command started.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import threading
import time
import uuid
from typing import IO, Any

from client.api import ENTRYPOINT, ENTRYPOINT_COMMAND, Client, Toolbox
from client.cli import output
from client.cli.verbs import pairs
from client.config import load_config
from client.errors import ApiError
from client.streams import STDOUT, Demux

TIMED_OUT = 124  # as timeout(1)
INTERRUPTED = 130
SLICE = 0.1  # seconds: how long Ctrl-C may wait for the main thread to notice it


def shell_text(parser: argparse.ArgumentParser, words: list[str]) -> str:
    if words and words[0] == "--":
        words = words[1:]
    if not words:
        parser.error("exec needs a command: sandbox-toolbox exec SANDBOX -- COMMAND")
    # One word is shell text as typed ('make && ./run | tee log'); several are an argv.
    return words[0] if len(words) == 1 else shlex.join(words)


def wrap(command: str, cwd: str | None, env: dict[str, str], keep_state: bool) -> str:
    """The session line, stdin at EOF (the CLI forwards none; a command that reads stdin must
    not wait forever). A subshell, so `exit 3` is the command's code and cwd and env hold for
    this command only; in a kept session without them, a group in the session's own shell,
    so `cd` and `export` carry over to the next command as in Daytona's sessions."""
    prefix = "".join(f"export {k}={shlex.quote(v)}; " for k, v in env.items())
    if cwd:
        prefix += f"cd -- {shlex.quote(cwd)} && "
    if keep_state and not prefix:
        return f"{{ {command}\n}} < /dev/null"
    return f"( {prefix}{command}\n) < /dev/null"


def pump(chunks: Any, out: IO[bytes], err: IO[bytes]) -> None:
    demux = Demux()
    for chunk in chunks:
        for stream, data in demux.feed(chunk):
            target = out if stream == STDOUT else err
            target.write(data)
            target.flush()
    for stream, data in demux.flush():
        (out if stream == STDOUT else err).write(data)
    out.flush()
    err.flush()


def exit_code_of(toolbox: Toolbox, session: str, command_id: str) -> int:
    """The finished command's code; the log stream ends only after the code is written."""
    code = toolbox.get_command(session, command_id).get("exitCode")
    if code is None:
        raise ApiError(502, f"command {command_id} ended without an exit code", "NO_EXIT_CODE")
    return int(code) if 0 <= int(code) <= 255 else 1


def run_exec(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    text = wrap(shell_text(parser, args.argv), args.cwd, pairs(parser, args.env, "--env"),
                keep_state=args.session is not None)
    if args.timeout is not None and args.timeout <= 0:
        parser.error("--timeout must be more than 0 seconds")
    with Client(load_config()) as api, api.toolbox(args.sandbox, timeout=60) as toolbox:
        session = args.session or f"cli-exec-{uuid.uuid4().hex[:12]}"
        throwaway = args.session is None and not args.detach
        if args.session is None:
            toolbox.create_session(session)
        else:
            try:
                toolbox.get_session(session)
            except ApiError as exc:
                if exc.status != 404:
                    raise
                toolbox.create_session(session)
        try:
            command_id = toolbox.session_exec(session, text, run_async=True)["cmdId"]
            if args.detach:
                print(f"{session} {command_id}")
                print(f"# follow it: sandbox-toolbox logs {args.sandbox} {session} {command_id} --follow",
                      file=sys.stderr)
                return 0
            return _follow(toolbox, session, command_id, args.timeout, throwaway)
        finally:
            if throwaway:
                try:
                    toolbox.delete_session(session)  # kills whatever the command left running
                except ApiError:
                    pass


def _follow(toolbox: Toolbox, session: str, command_id: str, timeout: float | None, throwaway: bool) -> int:
    failure: list[BaseException] = []
    done = threading.Event()

    def stream() -> None:
        try:
            pump(toolbox.follow_logs(session, command_id), sys.stdout.buffer, sys.stderr.buffer)
        except BaseException as exc:  # handed to the main thread
            failure.append(exc)
        finally:
            done.set()

    # The stream runs in a thread so the main thread can honour --timeout and Ctrl-C at once.
    reader = threading.Thread(target=stream, daemon=True)
    reader.start()
    try:
        finished = wait_interruptibly(done, timeout)
    except KeyboardInterrupt:
        _stop(toolbox, session, command_id, throwaway)
        return INTERRUPTED
    if not finished:
        _stop(toolbox, session, command_id, throwaway)
        print(f"error: the command ran longer than --timeout {timeout:g} s and was stopped", file=sys.stderr)
        return TIMED_OUT
    if failure:
        raise failure[0]
    return exit_code_of(toolbox, session, command_id)


def wait_interruptibly(event: threading.Event, timeout: float | None) -> bool:
    """`event.wait(timeout)` in slices. The kernel may hand Ctrl-C's SIGINT to any thread of
    the process (the reader's, the WebSocket's), and then a main thread blocked in one long
    wait never wakes to run Python's handler: the CLI sat there until the command ended.
    Each slice's return lets the handler run, so Ctrl-C takes at most a slice."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return event.is_set()
        if event.wait(SLICE if remaining is None else min(remaining, SLICE)):
            return True


def _stop(toolbox: Toolbox, session: str, command_id: str, throwaway: bool) -> None:
    """Ends the command: a throwaway session is deleted by the caller (which kills its whole
    process tree); in a kept session only the command's processes get SIGTERM."""
    if throwaway:
        return
    try:
        toolbox.signal_command(session, command_id, "TERM")
    except ApiError:
        pass


def run_logs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.follow and args.format == "json":
        parser.error("--follow streams raw output; it has no --format json")
    with Client(load_config()) as api, api.toolbox(args.sandbox, timeout=60) as toolbox:
        command_id = args.command_id
        if command_id is None and args.session == ENTRYPOINT:
            command_id = ENTRYPOINT_COMMAND
        if command_id is None:
            commands = toolbox.get_session(args.session).get("commands") or []
            if not commands:
                raise ApiError(404, f"session {args.session} has run no command yet", "NOT_FOUND")
            command_id = commands[-1]["id"]
        if args.follow:
            pump(toolbox.follow_logs(args.session, command_id), sys.stdout.buffer, sys.stderr.buffer)
            return 0
        logs, _offset = toolbox.command_logs(args.session, command_id)
        if args.format == "json":
            output.print_json({"sessionId": args.session, "commandId": command_id, **logs})
            return 0
        sys.stdout.write(logs.get("stdout", ""))
        sys.stdout.flush()
        sys.stderr.write(logs.get("stderr", ""))
        return 0
