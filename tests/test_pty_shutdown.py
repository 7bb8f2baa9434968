"""Stopping the daemon leaves no PTY shell, PTY job or interpreter worker behind."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from daytona._sync.code_interpreter import CodeInterpreter
from daytona_toolbox_api_client import InterpreterApi

from tests.helpers import sdk_api_client, sdk_process, start_daemon
from tests.test_pty import read_until


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_daemon_stop_kills_ptys_and_workers(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path)
    try:
        process = sdk_process(daemon)
        handle = process.create_pty_session("doomed")
        handle.send_input("sleep 300 & echo \"pids:$$:$!:\"\n")
        out = read_until(handle, b":\r\n").decode()
        shell_pid, job_pid = (int(x) for x in out.rsplit("pids:", 1)[1].split(":")[:2])
        interpreter = CodeInterpreter(InterpreterApi(sdk_api_client(daemon)), httpx.Client())
        context = interpreter.create_context()
        worker_pid = int(interpreter.run_code("import os; print(os.getpid())", context=context).stdout)
        default_pid = int(interpreter.run_code("import os; print(os.getpid())").stdout)
        assert all(alive(pid) for pid in (shell_pid, job_pid, worker_pid, default_pid))
        handle.disconnect()
    finally:
        daemon.stop()
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in (shell_pid, job_pid, worker_pid, default_pid)):
        assert time.monotonic() < deadline, "processes outlived the daemon"
        time.sleep(0.1)
