"""Sessions and execute work the same whichever shell the machine gives them (Daytona
prefers zsh, then bash; minimal images may only have dash or busybox sh)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from daytona.common.process import SessionExecuteRequest

from tests.helpers import sdk_process, start_daemon

SHELLS = [path for path in ("/bin/dash", "/usr/bin/zsh", "/bin/zsh", "/bin/sh") if os.access(path, os.X_OK)]


@pytest.mark.parametrize("shell", SHELLS)
def test_session_and_execute_under_shell(shell: str, tmp_path: Path) -> None:
    running = start_daemon(tmp_path, extra_env={"TOOLBOX_SHELL": shell})
    try:
        process = sdk_process(running)
        assert process.exec("echo $0; echo err >&2; exit 4").exit_code == 4
        process.create_session("s")
        (running.workdir / "d").mkdir()
        first = process.execute_session_command("s", SessionExecuteRequest(command="cd d; export V=1; echo a; echo b >&2"))
        assert (first.stdout, first.stderr, first.exit_code) == ("a\n", "b\n", 0)
        second = process.execute_session_command("s", SessionExecuteRequest(command='pwd; echo "$V"; false'))
        assert (second.stdout, second.exit_code) == (f"{running.workdir / 'd'}\n1\n", 1)
        syntax = process.execute_session_command("s", SessionExecuteRequest(command='echo "unterminated'))
        assert syntax.exit_code != 0
        # A syntax error in one command does not end the session.
        assert process.execute_session_command("s", SessionExecuteRequest(command="echo still")).stdout == "still\n"
        process.delete_session("s")
    finally:
        running.stop()
