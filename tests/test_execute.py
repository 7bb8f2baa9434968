"""`POST /process/execute` and `POST /process/code-run` through the official SDK and raw HTTP."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from daytona.common.errors import (
    DaytonaBadRequestError,
    DaytonaFileNotFoundError,
    DaytonaProcessExecutionTimeoutError,
)
from daytona._sync.process import Process
from daytona.common.process import CodeRunParams

from tests.helpers import RunningDaemon, sdk_process
from tests.system import requires

ARTIFACT = "dtn_artifact_k39fd2:"


@pytest.fixture(params=[False, True], ids=["direct", "via_prefix"])
def process(request: pytest.FixtureRequest, daemon: RunningDaemon) -> Process:
    return sdk_process(daemon, via_prefix=request.param)


def test_exec_merges_stdout_and_stderr_and_keeps_exit_code(process: Process) -> None:
    response = process.exec("echo out; echo err >&2; echo out2; exit 7")
    assert response.exit_code == 7
    assert response.result == "out\nerr\nout2\n"
    assert response.artifacts is not None and response.artifacts.stdout == response.result


def test_exec_cwd_env_and_relative_cwd(process: Process, daemon: RunningDaemon) -> None:
    (daemon.workdir / "sub").mkdir(exist_ok=True)
    response = process.exec('pwd; echo "$GREETING"', cwd="sub", env={"GREETING": "hello world"})
    assert response.result == f"{daemon.workdir / 'sub'}\nhello world\n"
    assert process.exec("pwd").result.strip() == str(daemon.workdir)


def test_exec_script_goes_to_the_shell_stdin(process: Process) -> None:
    # Multi-line scripts with functions and heredocs, larger than any argv limit would like.
    filler = "# " + "x" * 200_000 + "\n"
    script = filler + 'greet() { echo "hi $1"; }\ngreet there\ncat <<EOF\nheredoc $((1+2))\nEOF\n'
    response = process.exec(script)
    assert response.exit_code == 0
    assert response.result == "hi there\nheredoc 3\n"


def test_exec_timeout_kills_the_whole_group(daemon: RunningDaemon, tmp_path: Path) -> None:
    marker = tmp_path / "survivor"
    started = time.monotonic()
    with pytest.raises(DaytonaProcessExecutionTimeoutError) as info:
        sdk_process(daemon, via_prefix=True).exec(f"(sleep 1.5; touch {marker}) & sleep 30", timeout=1)
    assert info.value.status_code == 408
    assert time.monotonic() - started < 10
    time.sleep(1.5)
    assert not marker.exists(), "a background child of the timed-out command survived"


def test_exec_errors_are_clear(process: Process, daemon: RunningDaemon) -> None:
    with pytest.raises(DaytonaBadRequestError, match="empty or whitespace-only"):
        process.exec("   ")
    with pytest.raises(DaytonaBadRequestError, match="invalid environment variable name: '1BAD'"):
        process.exec("true", env={"1BAD": "x"})
    with pytest.raises(DaytonaFileNotFoundError, match="does not exist"):
        process.exec("true", cwd="/no/such/dir")
    (daemon.workdir / "plain-file").write_text("x")
    with pytest.raises(DaytonaBadRequestError, match="not a directory"):
        process.exec("true", cwd="plain-file")


def test_exec_raw_wire_shape(daemon: RunningDaemon) -> None:
    with daemon.client() as client:
        response = client.post("/process/execute", json={"command": "printf abc"})
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {"exitCode": 0, "result": "abc"}
        # Killed by a signal → -1, like Go's ExitStatus().
        assert client.post("/process/execute", json={"command": "kill -9 $$"}).json()["exitCode"] == -1
        bad = client.post("/process/execute", json={"command": "true", "timeout": -1})
        assert bad.status_code == 400 and bad.json()["code"] == "INVALID_REQUEST_BODY"
        assert client.post("/process/execute", content=b"{not json").status_code == 400


def test_exec_big_output_streams_whole(daemon: RunningDaemon) -> None:
    size = 8 * 1024 * 1024
    with daemon.client(timeout=60) as client:
        response = client.post("/process/execute", json={"command": f"head -c {size} /dev/zero | tr '\\0' a; echo; echo tail"})
    assert response.status_code == 200
    body = response.json()
    assert body["exitCode"] == 0
    assert len(body["result"]) == size + len("\ntail\n")
    assert body["result"].endswith("a\ntail\n")


def test_exec_invalid_utf8_is_replaced(daemon: RunningDaemon) -> None:
    with daemon.client() as client:
        result = client.post("/process/execute", json={"command": r"printf 'a\377b'"}).json()["result"]
    assert result == "a\ufffdb"


# -- code-run -------------------------------------------------------------------------------------


def test_code_run_python_argv_env(daemon: RunningDaemon) -> None:
    process = sdk_process(daemon, language="python")
    code = "import os, sys\nprint(sys.argv[1:], os.environ['COLOR'])\nsys.exit(3)\n"
    response = process.code_run(code, params=CodeRunParams(argv=["a", "b c"], env={"COLOR": "red"}))
    # argv is joined unquoted, as Daytona does: shell word splitting applies.
    assert response.result == "['a', 'b', 'c'] red\n"
    assert response.exit_code == 3


def test_code_run_artifact_lines_become_charts(daemon: RunningDaemon) -> None:
    # The script prints the artifact lines itself: the protocol is tested without matplotlib.
    chart = (
        '{"type":"chart","value":{"type":"bar","title":"Sales","x_label":"q","y_label":"n",'
        '"elements":[{"label":"Q1","group":"2024","value":3},{"label":"Q2","group":"2024","value":"4"}]}}'
    )
    lines = [ARTIFACT + chart, ARTIFACT + "not json", ARTIFACT + '{"type":"other"}']
    code = "print('before')\n" + "".join(f"print({line!r})\n" for line in lines) + "print('after')\n"
    process = sdk_process(daemon, via_prefix=True)
    response = process.code_run(code)
    assert response.exit_code == 0
    assert response.result == "before\nafter\n"
    assert response.artifacts is not None and response.artifacts.charts is not None
    assert len(response.artifacts.charts) == 1
    bar = response.artifacts.charts[0]
    assert type(bar).__name__ == "BarChart"
    assert bar.title == "Sales"
    assert [(e.label, e.value) for e in bar.elements] == [("Q1", "3"), ("Q2", "4")]


def test_code_run_drops_charts_the_sdk_cannot_parse(daemon: RunningDaemon) -> None:
    bad = '{"type":"chart","value":{"type":"line","elements":[{"label":"l","points":[["2024-01-01",1]]}]}}'
    with daemon.client() as client:
        body = client.post(
            "/process/code-run", json={"language": "python", "code": f"print({ARTIFACT + bad!r})\nprint('x')"}
        ).json()
    assert body == {"exitCode": 0, "result": "x\n"}


@requires("node")
def test_code_run_javascript(daemon: RunningDaemon) -> None:
    process = sdk_process(daemon, language="javascript")
    response = process.code_run(
        "console.log(process.argv.slice(1).join(','), process.env.K); console.error('e')",
        params=CodeRunParams(argv=["x", "y"], env={"K": "v"}),
    )
    assert response.exit_code == 0
    assert response.result == "x,y v\ne\n"


def test_code_run_typescript_runs_or_says_what_is_missing(daemon: RunningDaemon) -> None:
    process = sdk_process(daemon, language="typescript")
    response = process.code_run("const n: number = 41 + 1;\nconsole.log(`n=${n}`);\n")
    if response.exit_code == 127:
        assert "no TypeScript runner found" in response.result
    else:
        assert response.exit_code == 0 and response.result == "n=42\n"


def test_code_run_bad_requests(daemon: RunningDaemon) -> None:
    with daemon.client() as client:
        unsupported = client.post("/process/code-run", json={"language": "cobol", "code": "x"})
        assert unsupported.status_code == 400 and "unsupported language: cobol" in unsupported.json()["message"]
        empty = client.post("/process/code-run", json={"language": "python", "code": " "})
        assert empty.status_code == 400
        timeout = client.post("/process/code-run", json={"language": "python", "code": "import time; time.sleep(30)", "timeout": 1})
        assert timeout.status_code == 408 and timeout.json()["code"] == "PROCESS_EXECUTION_TIMEOUT"


def _sandbox_python_has_matplotlib() -> bool:
    # The daemon runs `python3` from PATH: that is the interpreter that must have it.
    probe = subprocess.run(["python3", "-c", "import matplotlib, numpy"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _sandbox_python_has_matplotlib(), reason="python3 on PATH has no matplotlib/numpy")
def test_code_run_matplotlib_charts(daemon: RunningDaemon) -> None:
    code = (
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 2, 3], [1, 4, 9], label='sq')\nplt.title('Squares')\nplt.show()\n"
        "fig, ax = plt.subplots()\nax.bar(['a', 'b'], [3, 5])\nax.set_title('Bars')\nplt.show()\n"
        "plt.show()\n"  # nothing new to emit
        "print('done')\n"
    )
    response = sdk_process(daemon).code_run(code)
    assert response.exit_code == 0, response.result
    assert response.result == "done\n"
    assert response.artifacts is not None and response.artifacts.charts is not None
    charts = response.artifacts.charts
    assert [type(c).__name__ for c in charts] == ["LineChart", "BarChart"]
    assert charts[0].title == "Squares" and charts[0].png
    assert [(e.label, e.value) for e in charts[1].elements] == [("a", "3"), ("b", "5")]
