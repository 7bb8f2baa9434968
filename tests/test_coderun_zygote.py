"""Python code runs fork a warm interpreter (toolbox/process/execute/zygote.py).

Every run must still get a fresh process state and behave as `python3 -u -` through the
shell did; the shell path is still taken for what the zygote does not mimic, and the
tests compare both on one daemon (argv `$DTN_NOT_SET` needs the shell and expands to
nothing, so the same code runs the old way).
"""

from __future__ import annotations

import ast
import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests import procfs
from tests.helpers import RunningDaemon, start_daemon
from tests.procfs import gone
from toolbox.process.execute.zygote import plain_argv, source_needs_shell

ZYGOTE_MARK = b"The warm interpreter behind /process/code-run"
SHELL = ["$DTN_NOT_SET"]  # argv the zygote leaves to the shell; expands to no word at all
PARENT = "import os\nprint(os.getppid(), open(f'/proc/{os.getppid()}/cmdline', 'rb').read()[:200])\n"


def code_run(daemon: RunningDaemon, code: str, argv: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    with daemon.client(timeout=60) as client:
        response = client.post("/process/code-run", json={"language": "python", "code": code, "argv": argv, **extra})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def parent_of_run(daemon: RunningDaemon, argv: list[str] | None = None) -> tuple[int, bytes]:
    """The pid and (the start of) the command line of the process a run's code ran under."""
    pid, cmdline = code_run(daemon, PARENT, argv)["result"].split(" ", 1)
    return int(pid), ast.literal_eval(cmdline)


def zygotes_of(daemon: RunningDaemon) -> list[int]:
    """The zygotes below the daemon (they run under a shell the daemon started)."""
    return [pid for pid in procfs.command_lines(ZYGOTE_MARK) if procfs.ppid(procfs.ppid(pid)) == daemon.process.pid]


def wait_until(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def test_the_zygote_starts_with_the_daemon_and_runs_fork_it(fresh_daemon: RunningDaemon) -> None:
    assert wait_until(lambda: len(zygotes_of(fresh_daemon)) == 1), "no zygote started with the daemon"
    [zygote] = zygotes_of(fresh_daemon)
    assert parent_of_run(fresh_daemon) == (zygote, Path(f"/proc/{zygote}/cmdline").read_bytes()[:200])
    _pid, shell = parent_of_run(fresh_daemon, SHELL)
    assert ZYGOTE_MARK not in shell  # the comparison path of these tests is really the shell


PROBE = """
import json, os, sys
print(json.dumps({
    "modules": sorted(m for m in sys.modules if m not in ("json", "_json") and not m.startswith("json.")),
    "globals": [k for k in globals() if k not in ("json", "os", "sys")],
    "main": [repr(globals()[k]) for k in ("__name__", "__file__", "__cached__", "__loader__", "__spec__", "__package__", "__doc__")],
    "argv": sys.argv, "orig_argv": sys.orig_argv[1:], "executable": sys.executable,
    "path": sys.path, "cwd": os.getcwd(), "env": dict(os.environ), "stdin": sys.stdin.read(),
    "stdio": [(f.encoding, f.errors, f.line_buffering, f.write_through) for f in (sys.stdin, sys.stdout, sys.stderr)],
    "flags": str(sys.flags), "fds": sorted(os.listdir("/proc/self/fd")),
    "session": os.getsid(0) == os.getpid(), "group": os.getpgid(0) == os.getpid(),
    "signals": [str(__import__("signal").getsignal(s)) for s in range(1, 32) if s not in (9, 19)],
}))
"""


def test_a_forked_run_sees_what_a_fresh_python3_saw(daemon: RunningDaemon) -> None:
    zygote = json.loads(code_run(daemon, PROBE)["result"])
    shell = json.loads(code_run(daemon, PROBE, SHELL)["result"])
    # One difference on purpose: a forked run leads its own session and process group
    # (through the shell, the shell did), so a timeout still kills all of it.
    assert zygote.pop("session") and zygote.pop("group")
    shell.pop("session"), shell.pop("group")
    assert zygote == shell
    assert zygote["argv"] == ["-"]
    # Nothing of the zygote's leaks in: no channel to it, no other run's pipes.
    assert len(zygote["fds"]) == 4  # 0, 1, 2 and the one listdir opened


def test_argv_and_env_as_through_the_shell(daemon: RunningDaemon) -> None:
    code = "import os, sys\nprint(sys.argv, os.environ['COLOR'], os.environ.get('PWD'), os.environ.get('SHLVL'))\n"
    zygote = code_run(daemon, code, ["a", "b c", "--x=1"], envs={"COLOR": "red"})
    shell = code_run(daemon, code, ["a", "b c", "--x=1", *SHELL], envs={"COLOR": "red"})
    assert zygote == shell
    assert zygote["result"].startswith("['-', 'a', 'b', 'c', '--x=1'] red ")


def test_state_does_not_leak_from_one_run_to_the_next(daemon: RunningDaemon) -> None:
    first = code_run(daemon, (
        "import os, sys, builtins, fractions, decimal\n"
        "X = 1\nbuiltins.LEAKED = 1\nsys.path.append('/nowhere')\nsys.modules['fake_mod'] = sys\n"
        "sys.setrecursionlimit(77)\nos.environ['LEAK'] = '1'\nos.putenv('LEAK2', '1')\nos.chdir('/')\n"
        "import random\nprint(random.random())\n"
    ), envs={"ONLY_FIRST": "yes"})
    assert first["exitCode"] == 0, first
    second = code_run(daemon, (
        "import os, sys, builtins, random\n"
        "print([n for n in ('fractions', 'decimal', 'fake_mod') if n in sys.modules],\n"
        "      'X' in globals(), hasattr(builtins, 'LEAKED'), '/nowhere' in sys.path,\n"
        "      sys.getrecursionlimit() == 77, [k for k in ('LEAK', 'LEAK2', 'ONLY_FIRST') if k in os.environ],\n"
        "      os.getcwd() == '/')\n"
        "print(random.random())\n"
    ))
    state, number = second["result"].splitlines()
    assert state == "[] False False False False [] False"
    assert number != first["result"].strip()  # each run's random module is seeded anew


@pytest.mark.parametrize("code", [
    "import sys\nprint('a')\nsys.exit(3)",
    "import sys\nsys.exit('bye')",
    "import os\nprint('x', end='')\nos._exit(7)",
    "print('before')\n1 / 0",
    "def f():\n    raise ValueError('deep')\nf()",
    "print(",
    "raise KeyboardInterrupt",
    "import sys\nsys.stderr.write('err\\n')\nprint('out')",
    ("import atexit, threading, time\natexit.register(lambda: print('atexit'))\n"
     "threading.Thread(target=lambda: (time.sleep(0.2), print('thread'))).start()"),
    "f = open('unclosed.txt', 'w')\nf.write('kept')\nprint(open('unclosed.txt').read() == '')",
    "# -*- coding: latin-1 -*-\nprint(len('\\xe9'))",
    "#!/usr/bin/python\n# vim: set fileencoding=utf8 :\nprint(1)",
    "# coding: UTF-8\nprint(1)",
    "print(1)\n\x00\n",
])
def test_exits_and_errors_match_the_shell(daemon: RunningDaemon, code: str) -> None:
    assert code_run(daemon, code) == code_run(daemon, code, SHELL)


def test_a_file_left_open_is_flushed_at_exit(daemon: RunningDaemon) -> None:
    code_run(daemon, "f = open('flushed.txt', 'w')\nf.write('kept')\n")
    assert (daemon.workdir / "flushed.txt").read_text() == "kept"


def test_a_run_killed_by_a_signal(daemon: RunningDaemon) -> None:
    code = "import ctypes\nprint('x', flush=True)\nctypes.string_at(0)"
    zygote, shell = code_run(daemon, code), code_run(daemon, code, SHELL)
    assert zygote["exitCode"] == shell["exitCode"] == 139
    assert zygote["result"].startswith("x\n") and "Segmentation fault" in zygote["result"]
    assert "Segmentation fault" in shell["result"]
    term = code_run(daemon, "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)")
    assert term["exitCode"] == 128 + signal.SIGTERM and "Terminated" in term["result"]


def test_a_run_that_forks_or_leaves_children(daemon: RunningDaemon) -> None:
    forked = code_run(daemon, (
        "import os\npid = os.fork()\nif pid == 0:\n    print('child', flush=True)\n    os._exit(0)\n"
        "os.waitpid(pid, 0)\nprint('parent')\n"
    ))
    assert forked == {"exitCode": 0, "result": "child\nparent\n"}
    started = time.monotonic()
    left = code_run(daemon, "import subprocess\nsubprocess.Popen(['sleep', '30'])\nprint('left')")
    assert left == {"exitCode": 0, "result": "left\n"}
    assert time.monotonic() - started < 10  # the run ends with its own process, as before


def test_a_run_that_never_ends_is_killed_with_its_children(daemon: RunningDaemon, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    code = (
        "import os, subprocess, time\n"
        "child = subprocess.Popen(['sleep', '987'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "while True:\n    time.sleep(1)\n"
    )
    started = time.monotonic()
    with daemon.client(timeout=30) as client:
        response = client.post("/process/code-run", json={"language": "python", "code": code, "timeout": 1})
    assert response.status_code == 408 and response.json()["code"] == "PROCESS_EXECUTION_TIMEOUT"
    assert time.monotonic() - started < 10
    run_pid, sleep_pid = map(int, pids.read_text().split())
    assert wait_until(lambda: gone(run_pid) and gone(sleep_pid), 5)
    assert code_run(daemon, "print('next')")["result"] == "next\n"


def test_a_dead_zygote_is_replaced_transparently(fresh_daemon: RunningDaemon) -> None:
    zygote, _cmdline = parent_of_run(fresh_daemon)
    os.kill(zygote, signal.SIGKILL)
    assert wait_until(lambda: gone(zygote), 5)
    replaced, cmdline = parent_of_run(fresh_daemon)
    assert replaced != zygote and ZYGOTE_MARK in cmdline
    # A run that kills its own zygote ends (it cannot be told its exit status: -1) ...
    started = time.monotonic()
    killed = code_run(fresh_daemon, "import os, time\nos.kill(os.getppid(), 9)\ntime.sleep(30)")
    assert killed["exitCode"] == -1 and time.monotonic() - started < 10
    # ... and the next run gets a new one.
    again, cmdline = parent_of_run(fresh_daemon)
    assert again not in (zygote, replaced) and ZYGOTE_MARK in cmdline


def test_concurrent_runs(daemon: RunningDaemon) -> None:
    code = "import sys, time\ntime.sleep(1)\nprint(sys.argv[1])"
    started = time.monotonic()
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda n: code_run(daemon, code, [str(n)]), range(6)))
    assert [r["result"] for r in results] == [f"{n}\n" for n in range(6)]
    assert time.monotonic() - started < 4.5  # they ran side by side


def test_big_output_is_returned_whole(daemon: RunningDaemon) -> None:
    size = 24 * 1024 * 1024
    result = code_run(daemon, f"import sys\nsys.stdout.write('x' * {size})\nprint('end', file=sys.stderr)")
    assert result["exitCode"] == 0 and len(result["result"]) == size + 4 and result["result"].endswith("xend\n")


def test_what_the_zygote_cannot_mimic_takes_the_shell(daemon: RunningDaemon, tmp_path: Path) -> None:
    (tmp_path / "extra_mod.py").write_text("VALUE = 'from PYTHONPATH'\n")
    # A start-up variable: Python must start with it, so a fresh python3 is started.
    run = code_run(daemon, "import extra_mod\nprint(extra_mod.VALUE)", envs={"PYTHONPATH": str(tmp_path)})
    assert run == {"exitCode": 0, "result": "from PYTHONPATH\n"}
    _pid, cmdline = parent_of_run(daemon, ["$HOME"])
    assert ZYGOTE_MARK not in cmdline
    expanded = code_run(daemon, "import sys\nprint(sys.argv[1:])", ["$HOME", "*.nomatch", "'a b'"])
    assert expanded["result"] == f"['{daemon.home}', '*.nomatch', 'a b']\n"


def test_plain_argv() -> None:
    assert plain_argv([]) == []
    assert plain_argv(["a", "b  c\td", "--x=1", "-v", "a/b.py", "k=v", "1,2", "u@h:p", "50%"]) == [
        "a", "b", "c", "d", "--x=1", "-v", "a/b.py", "k=v", "1,2", "u@h:p", "50%"]
    for word in ["$HOME", "*", "a?", "[ab]", "~", "'q'", '"q"', "a\\b", "a;b", "a|b", "a&", "<x", ">x",
                 "#c", "=ls", "{a,b}", "a\nb", "`id`", "$(id)", "!x", "a\x00"]:
        assert plain_argv([word]) is None, word


def test_source_the_tokenizer_treats_its_own_way_takes_the_shell() -> None:
    assert source_needs_shell("# -*- coding: latin-1 -*-\nprint(1)")
    assert source_needs_shell("x = 1\n# vim: set fileencoding=cp1252 :\n")
    assert source_needs_shell("print(1)\x00")
    assert not source_needs_shell("# coding: UTF-8\nprint(1)")
    assert not source_needs_shell("# coding=utf_8-unix\n")
    assert not source_needs_shell("x = 1\ny = 2\n# coding: cp1252\n")  # only the first two lines count


def test_a_stopped_zygote_is_replaced(fresh_daemon: RunningDaemon) -> None:
    # A run can stop its zygote (SIGSTOP to its parent): the next run must not hang on it.
    stopped, _cmdline = parent_of_run(fresh_daemon)
    started = time.monotonic()
    stopper = code_run(fresh_daemon, "import os, signal\nos.kill(os.getppid(), signal.SIGSTOP)\nprint('stopped it')")
    # Its exit is seen, but a stopped zygote cannot report the status: -1, output kept.
    assert stopper == {"exitCode": -1, "result": "stopped it\n"}
    assert time.monotonic() - started < 15
    started = time.monotonic()
    replaced, cmdline = parent_of_run(fresh_daemon)
    assert replaced != stopped and ZYGOTE_MARK in cmdline
    assert time.monotonic() - started < 15  # the 5 s it is given to answer, and a new start-up
    assert wait_until(lambda: gone(stopped), 5)  # the stuck one was killed, not left behind


def test_the_zygote_can_be_turned_off(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path, extra_env={"TOOLBOX_CODERUN_ZYGOTE": "0"})
    try:
        _pid, cmdline = parent_of_run(daemon)
        assert ZYGOTE_MARK not in cmdline and zygotes_of(daemon) == []
    finally:
        daemon.stop()
