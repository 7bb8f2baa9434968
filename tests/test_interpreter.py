"""Stateful code interpreter through the official SDK's `CodeInterpreter`, plus raw frames."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import httpx
import pytest
from daytona._sync.code_interpreter import CodeInterpreter
from daytona.common.errors import (
    DaytonaBadRequestError,
    DaytonaConflictError,
    DaytonaConnectionError,
    DaytonaError,
    DaytonaNotFoundError,
    DaytonaTimeoutError,
)
from daytona.common.code_interpreter import ExecutionError
from daytona_toolbox_api_client import InterpreterApi, InterpreterContext
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from tests.helpers import RunningDaemon, sdk_api_client, start_daemon


@pytest.fixture
def interpreter(daemon: RunningDaemon) -> CodeInterpreter:
    return CodeInterpreter(InterpreterApi(sdk_api_client(daemon)), httpx.Client())


def test_through_the_sdk_sandbox_prefix(daemon: RunningDaemon) -> None:
    """The SDK's own proxy client puts `/{sandboxId}` in front of REST and WebSocket paths."""
    prefixed = CodeInterpreter(InterpreterApi(sdk_api_client(daemon, via_prefix=True)), httpx.Client())
    context = prefixed.create_context()
    try:
        assert context.id in {c.id for c in prefixed.list_contexts()}
        assert prefixed.run_code("print(6 * 7)", context=context).stdout == "42\n"
    finally:
        prefixed.delete_context(context)


def test_run_code_streams_stdout_stderr_and_keeps_state(interpreter: CodeInterpreter) -> None:
    stdout: list[str] = []
    stderr: list[str] = []
    result = interpreter.run_code(
        "import sys, os\nstate_value = 41\nprint('hello', state_value + 1)\nsys.stderr.write('warn\\n')\n"
        "os.system('echo from-subprocess')",
        on_stdout=lambda m: stdout.append(m.output),
        on_stderr=lambda m: stderr.append(m.output),
    )
    assert result.error is None
    assert result.stdout == "hello 42\nfrom-subprocess\n" and "".join(stdout) == result.stdout
    assert result.stderr == "warn\n" and "".join(stderr) == "warn\n"
    assert interpreter.run_code("print(state_value)").stdout == "41\n"


def test_errors_are_reported_with_a_user_traceback(interpreter: CodeInterpreter) -> None:
    errors: list[ExecutionError] = []
    result = interpreter.run_code("print('before')\ndef f():\n    raise ValueError('bad value')\nf()", on_error=errors.append)
    assert result.stdout == "before\n"
    assert result.error is not None and errors == [result.error]
    assert (result.error.name, result.error.value) == ("ValueError", "bad value")
    assert 'File "<stdin>", line 4' in result.error.traceback and "worker.py" not in result.error.traceback
    syntax = interpreter.run_code("def (:")
    assert syntax.error is not None and syntax.error.name == "SyntaxError"
    assert interpreter.run_code("raise SystemExit(3)").error is None  # not an error
    assert interpreter.run_code("print('alive')").stdout == "alive\n"


def test_contexts_are_isolated_and_managed(interpreter: CodeInterpreter, daemon: RunningDaemon) -> None:
    sub = daemon.workdir / "ctx-dir"
    sub.mkdir(exist_ok=True)
    first = interpreter.create_context(cwd=str(sub))
    second = interpreter.create_context()
    try:
        assert (first.language, first.active, first.cwd) == ("python", True, str(sub))
        listed = {c.id for c in interpreter.list_contexts()}
        assert {first.id, second.id} <= listed and "default" not in listed
        interpreter.run_code("secret = 'only-in-first'", context=first)
        assert interpreter.run_code("print(secret)", context=first).stdout == "only-in-first\n"
        leaked = interpreter.run_code("print(secret)", context=second)
        assert leaked.error is not None and leaked.error.name == "NameError"
        assert interpreter.run_code("import os; print(os.getcwd())", context=first).stdout == f"{sub}\n"
    finally:
        interpreter.delete_context(first)
        interpreter.delete_context(second)
    assert not {first.id, second.id} & {c.id for c in interpreter.list_contexts()}
    with pytest.raises(DaytonaConnectionError, match="context not found"):
        interpreter.run_code("print(1)", context=first)
    with pytest.raises(DaytonaNotFoundError):
        interpreter.delete_context(first)


def test_default_context_cannot_be_deleted(interpreter: CodeInterpreter) -> None:
    default = InterpreterContext(id="default", cwd="/", created_at="", active=True, language="python")
    with pytest.raises(DaytonaBadRequestError):
        interpreter.delete_context(default)


def test_bad_context_requests(daemon: RunningDaemon, interpreter: CodeInterpreter) -> None:
    with pytest.raises(DaytonaError):
        interpreter.create_context(cwd=str(daemon.workdir / "missing"))
    with daemon.client() as client:
        response = client.post("/process/interpreter/context", json={"language": "javascript"})
        assert response.status_code == 400 and "python" in response.json()["message"]
        assert client.post("/process/interpreter/context", content=b"[1,").status_code == 400


def test_envs_apply_to_one_execution_only(interpreter: CodeInterpreter) -> None:
    code = "import os; print(os.environ.get('RUN_ONLY', 'unset'))"
    assert interpreter.run_code(code, envs={"RUN_ONLY": "set"}).stdout == "set\n"
    assert interpreter.run_code(code).stdout == "unset\n"


def test_timeout_interrupts_and_keeps_state(interpreter: CodeInterpreter) -> None:
    context = interpreter.create_context()
    try:
        interpreter.run_code("kept = 'yes'", context=context)
        started = time.monotonic()
        with pytest.raises(DaytonaTimeoutError):
            interpreter.run_code("import time\nwhile True: time.sleep(0.05)", context=context, timeout=1)
        assert time.monotonic() - started < 3
        # SIGINT stopped it (KeyboardInterrupt): the worker and its globals survive.
        assert interpreter.run_code("print(kept)", context=context).stdout == "yes\n"
    finally:
        interpreter.delete_context(context)


def test_timeout_kills_code_that_ignores_interrupts(interpreter: CodeInterpreter) -> None:
    context = interpreter.create_context()
    try:
        interpreter.run_code("kept = 'yes'", context=context)
        code = "import time\nwhile True:\n    try:\n        time.sleep(0.05)\n    except KeyboardInterrupt:\n        pass"
        started = time.monotonic()
        with pytest.raises(DaytonaTimeoutError):
            interpreter.run_code(code, context=context, timeout=1)
        assert 2.5 < time.monotonic() - started < 6  # 1 s timeout + 2 s grace, then SIGKILL
        lost = interpreter.run_code("print(kept)", context=context)  # restarted: state is gone
        assert lost.error is not None and lost.error.name == "NameError"
    finally:
        interpreter.delete_context(context)


def test_executions_in_one_context_run_fifo(interpreter: CodeInterpreter) -> None:
    context = interpreter.create_context()
    try:
        interpreter.run_code("order = []", context=context)
        results: dict[int, str] = {}

        def run(index: int, delay: float) -> None:
            code = f"import time\ntime.sleep({delay})\norder.append({index})\nprint(order)"
            results[index] = interpreter.run_code(code, context=context).stdout

        threads = []
        for index, delay in enumerate((1.5, 0.0, 0.0)):
            thread = threading.Thread(target=run, args=(index, delay))
            thread.start()
            threads.append(thread)
            time.sleep(0.4)  # arrival order 0, 1, 2 (1 and 2 queue behind the running 0)
        for thread in threads:
            thread.join(20)
        assert results == {0: "[0]\n", 1: "[0, 1]\n", 2: "[0, 1, 2]\n"}
    finally:
        interpreter.delete_context(context)


def raw_execute(daemon: RunningDaemon, payload: str | bytes) -> tuple[list[dict], int, str]:
    url = daemon.url.replace("http://", "ws://") + "/process/interpreter/execute"
    frames: list[dict] = []
    with connect(url, compression=None, proxy=None) as ws:
        ws.send(payload)
        try:
            while True:
                frames.append(json.loads(ws.recv(timeout=20)))
        except ConnectionClosed as closed:
            assert closed.rcvd is not None
            return frames, closed.rcvd.code, closed.rcvd.reason


def test_raw_frames_carry_all_keys_and_end_with_control(daemon: RunningDaemon) -> None:
    frames, code, _ = raw_execute(daemon, json.dumps({"code": "print('x' * 9000, end='')\nprint()\n1/0"}))
    assert code == 1000
    assert all(set(f) == {"type", "text", "name", "value", "traceback"} for f in frames)
    assert all(all(isinstance(v, str) for v in f.values()) for f in frames)
    assert "".join(f["text"] for f in frames if f["type"] == "stdout") == "x" * 9000 + "\n"
    assert [f["type"] for f in frames][-2:] == ["error", "control"]
    assert frames[-1]["text"] == "completed"


# The SDK reads with httpx-ws, whose default message limit is 64 KiB.
SDK_MESSAGE_LIMIT = 64 * 1024


@pytest.mark.parametrize("unit", ["x", "\x01", "é", "😀", "a\"\\😀\x1f"], ids=["ascii", "control", "latin", "astral", "mixed"])
def test_big_writes_leave_in_few_frames_each_within_the_sdks_message_limit(
    daemon: RunningDaemon, interpreter: CodeInterpreter, unit: str
) -> None:
    # Frames are budgeted in bytes as sent, escapes included: a control character is 6
    # bytes of JSON, an emoji 12, so a character budget would overflow the SDK's limit.
    count = 2_000_000 // len(unit)
    code = f"print({unit!r} * {count}, end='')"
    url = daemon.url.replace("http://", "ws://") + "/process/interpreter/execute"
    sizes: list[int] = []
    text: list[str] = []
    with connect(url, compression=None, proxy=None, max_size=None) as ws:
        ws.send(json.dumps({"code": code}))
        try:
            while True:
                message = ws.recv(timeout=20)
                sizes.append(len(message.encode() if isinstance(message, str) else message))
                frame = json.loads(message)
                if frame["type"] == "stdout":
                    text.append(frame["text"])
        except ConnectionClosed as closed:
            assert closed.rcvd is not None and closed.rcvd.code == 1000
    assert "".join(text) == unit * count
    assert max(sizes) <= SDK_MESSAGE_LIMIT
    encoded = len(json.dumps(unit * count))
    assert len(sizes) <= encoded // (SDK_MESSAGE_LIMIT // 2) + 3  # frames are mostly full
    assert interpreter.run_code(code).stdout == unit * count  # and the SDK takes them all


def test_raw_interrupted_control_frame_then_4008(daemon: RunningDaemon) -> None:
    frames, code, _ = raw_execute(daemon, json.dumps({"code": "import time; time.sleep(30)", "timeout": 1}))
    assert code == 4008
    assert frames[-1] == {"type": "control", "text": "interrupted", "name": "", "value": "", "traceback": ""}


@pytest.mark.parametrize(
    "payload, code, reason",
    [
        ("{not json", 1002, "invalid JSON payload"),
        (json.dumps({"code": ""}), 1008, "code is required"),
        (json.dumps({"code": "1", "timeout": -1}), 1008, "timeout must be greater than or equal to 0"),
        (json.dumps({"code": "1", "contextId": "nope"}), 1008, "context not found: nope"),
        (json.dumps({"code": "1", "envs": {"A": 1}}), 1008, "envs must be"),
        ("[1]", 1002, "invalid JSON payload"),
        (json.dumps({"code": 5}), 1008, "code is required"),
        (json.dumps({"code": "1", "contextId": 5}), 1008, "contextId must be a string"),
        (json.dumps({"code": "1", "envs": {"A=B": "1"}}), 1008, "envs must be"),
        (json.dumps({"code": "1", "envs": {"A": "nul\x00"}}), 1008, "envs must be"),
        (json.dumps({"code": "1", "envs": ["A"]}), 1008, "envs must be"),
        (json.dumps({"code": "1", "timeout": True}), 1008, "timeout must be a number of seconds"),
        (json.dumps({"code": "1", "timeout": "5"}), 1008, "timeout must be a number of seconds"),
        ('{"code": "1", "timeout": NaN}', 1008, "timeout must be greater than or equal to 0"),
    ],
)
def test_raw_validation_failures_are_close_codes(daemon: RunningDaemon, payload: str, code: int, reason: str) -> None:
    frames, close_code, close_reason = raw_execute(daemon, payload)
    assert frames == [] and close_code == code and close_reason.startswith(reason)


def test_client_leaving_interrupts_the_run(daemon: RunningDaemon, interpreter: CodeInterpreter) -> None:
    context = interpreter.create_context()
    try:
        url = daemon.url.replace("http://", "ws://") + "/process/interpreter/execute"
        with connect(url, proxy=None) as ws:
            ws.send(json.dumps({"code": "import time\ntime.sleep(60)", "contextId": context.id, "timeout": 0}))
            time.sleep(0.3)
        started = time.monotonic()
        # The next execution in that context is not stuck behind the abandoned one.
        assert interpreter.run_code("print('next')", context=context).stdout == "next\n"
        assert time.monotonic() - started < 5
    finally:
        interpreter.delete_context(context)


@pytest.mark.parametrize("unit", ["v", "😀", "\x01"], ids=["ascii", "astral", "control"])
def test_huge_error_message_stays_within_the_sdk_frame_limit(interpreter: CodeInterpreter, unit: str) -> None:
    # Clipped by encoded size: 16 Ki emoji would be 192 KiB of JSON in one field.
    result = interpreter.run_code(f"raise ValueError({unit!r} * 200000)")
    assert result.error is not None and result.error.name == "ValueError"
    assert result.error.value.endswith("[truncated]") and len(result.error.value) <= 16 * 1024
    assert result.error.value.startswith(unit * 100)
    # Both fields as the frame carries them: well below the SDK's 64 KiB message limit.
    assert len(json.dumps(result.error.value)) + len(json.dumps(result.error.traceback)) <= 40 * 1024


def test_worker_exit_is_reported_and_the_context_restarts(interpreter: CodeInterpreter) -> None:
    context = interpreter.create_context()
    try:
        interpreter.run_code("kept = 1", context=context)
        with pytest.raises(DaytonaConnectionError, match="worker process ended"):
            interpreter.run_code("import os; os._exit(3)", context=context)
        lost = interpreter.run_code("print(kept)", context=context)
        assert lost.error is not None and lost.error.name == "NameError"
    finally:
        interpreter.delete_context(context)


def test_deleting_a_context_ends_its_running_execution(interpreter: CodeInterpreter) -> None:
    context = interpreter.create_context()
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            interpreter.run_code("import time; time.sleep(60)", context=context, timeout=0)
        except DaytonaError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.5)
    interpreter.delete_context(context)
    thread.join(10)
    assert not thread.is_alive()
    assert len(outcome) == 1 and "context shutdown" in str(outcome[0])


def test_raw_echoes_only_the_sdk_version_subprotocol(daemon: RunningDaemon) -> None:
    url = daemon.url.replace("http://", "ws://") + "/process/interpreter/execute"
    with connect(url, subprotocols=[Subprotocol("X-Daytona-SDK-Version~1.0"), Subprotocol("other")], proxy=None) as ws:
        assert ws.subprotocol == "X-Daytona-SDK-Version~1.0"
        ws.send(json.dumps({"code": "print(1)"}))
        assert json.loads(ws.recv(timeout=10))["text"] == "1\n"


def test_bytes_written_to_stdout_buffer_and_long_context_ids(daemon: RunningDaemon, interpreter: CodeInterpreter) -> None:
    result = interpreter.run_code("import sys\nsys.stdout.buffer.write('h\\u00e9'.encode()[:2])\n"
                                  "sys.stdout.buffer.write('h\\u00e9\\n'.encode()[2:])\nsys.stdout.flush()")
    assert result.stdout == "hé\n"
    frames, code, reason = raw_execute(daemon, json.dumps({"code": "1", "contextId": "é" * 200}))
    assert code == 1008 and reason.startswith("context not found: é") and len(reason.encode()) <= 123


def test_print_floods_are_coalesced_in_order(daemon: RunningDaemon) -> None:
    code = "import sys\nfor i in range(50000):\n    print(i)\n    if i % 10000 == 0: print('e', i, file=sys.stderr)"
    frames, code_, _ = raw_execute(daemon, json.dumps({"code": code}))
    assert code_ == 1000
    out = [f for f in frames if f["type"] in ("stdout", "stderr")]
    assert "".join(f["text"] for f in out if f["type"] == "stdout") == "".join(f"{i}\n" for i in range(50000))
    assert len(out) < 2000  # not one frame per line
    # Cross-stream order survives the batching: each stderr line sits right after its stdout line.
    merged = "".join(f["text"] for f in out)
    for i in range(0, 50000, 10000):
        assert f"\n{i}\ne {i}\n" in "\n" + merged


def test_output_of_forked_children_arrives(interpreter: CodeInterpreter) -> None:
    code = (
        "import multiprocessing as mp\n"
        "def work(n):\n    print('child', n, flush=True)\n    return n * n\n"
        "with mp.get_context('fork').Pool(2) as pool:\n    print(sorted(pool.map(work, range(4))))"
    )
    result = interpreter.run_code(code, timeout=30)
    assert result.error is None, result.error
    assert "[0, 1, 4, 9]" in result.stdout
    assert sorted(line for line in result.stdout.splitlines() if line.startswith("child")) == [
        f"child {n}" for n in range(4)
    ]


def test_interrupting_a_print_loop_keeps_the_worker_usable(daemon: RunningDaemon, interpreter: CodeInterpreter) -> None:
    """SIGINT lands while the worker is busy writing frames: the stream stays intact."""
    context = interpreter.create_context()
    try:
        interpreter.run_code("kept = 'still here'", context=context)
        payload = {"code": "while True: print('spam' * 50)", "contextId": context.id, "timeout": 1}
        frames, code, _ = raw_execute(daemon, json.dumps(payload))
        assert code == 4008 and frames[-1]["text"] == "interrupted"  # not killed: state kept
        assert sum(len(f["text"]) for f in frames if f["type"] == "stdout") > 100_000
        assert interpreter.run_code("print(kept)", context=context).stdout == "still here\n"
    finally:
        interpreter.delete_context(context)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_context_cap_answers_409_until_one_is_deleted(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path, extra_env={"TOOLBOX_INTERPRETER_MAX_CONTEXTS": "2"})
    try:
        interpreter = CodeInterpreter(InterpreterApi(sdk_api_client(daemon)), httpx.Client())
        first, second = interpreter.create_context(), interpreter.create_context()
        with pytest.raises(DaytonaConflictError) as caught:
            interpreter.create_context()
        assert caught.value.status_code == 409
        assert "TOOLBOX_INTERPRETER_MAX_CONTEXTS" in str(caught.value) and "delete" in str(caught.value)
        assert {c.id for c in interpreter.list_contexts()} == {first.id, second.id}
        # The implicit default context is not one of them and still runs code.
        assert interpreter.run_code("print(1)").stdout == "1\n"
        interpreter.delete_context(first)
        third = interpreter.create_context()
        assert interpreter.run_code("print(3)", context=third).stdout == "3\n"
    finally:
        daemon.stop()


def test_idle_contexts_are_reaped_but_never_while_running(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path, extra_env={"TOOLBOX_INTERPRETER_IDLE_TIMEOUT": "2"})
    try:
        interpreter = CodeInterpreter(InterpreterApi(sdk_api_client(daemon)), httpx.Client())
        idle, busy = interpreter.create_context(), interpreter.create_context()
        idle_pid = int(interpreter.run_code("import os; print(os.getpid())", context=idle).stdout)
        assert interpreter.run_code("kept = 'state'").error is None  # in the default context
        # Runs for 2 idle timeouts: the running context stays, the idle one goes.
        result = interpreter.run_code("import time\nkept = 7\ntime.sleep(4)\nprint(kept)", context=busy)
        assert result.stdout == "7\n" and result.error is None
        assert {c.id for c in interpreter.list_contexts()} == {busy.id}
        assert not _alive(idle_pid)
        with pytest.raises(DaytonaConnectionError, match="context not found"):
            interpreter.run_code("print(1)", context=idle)
        assert interpreter.run_code("print(kept)", context=busy).stdout == "7\n"  # used just now: kept

        deadline = time.monotonic() + 10
        while interpreter.list_contexts() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert interpreter.list_contexts() == []
        # The default context is never deleted: its idle worker was stopped, a new one runs
        # the next code, without the old state.
        fresh = interpreter.run_code("print('kept' in globals())")
        assert fresh.stdout == "False\n" and fresh.error is None
    finally:
        daemon.stop()
