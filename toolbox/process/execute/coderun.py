"""Scripts for `/process/code-run`: how each language's code is handed to its runtime.

Mirrors Daytona (toolbox-api.md §7): the code is base64-piped into the interpreter so no
quoting can break it, argv is appended unquoted (shell word splitting applies, as there).
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

from toolbox.errors import Code, DaemonError

LANGUAGES = ("python", "javascript", "typescript")
NO_TS_RUNNER = 127

_MATPLOTLIB = re.compile(
    r"(^\s*import\s+matplotlib|^\s*from\s+matplotlib|__import__\(\s*['\"]matplotlib"
    r"|import_module\(\s*['\"]matplotlib|load_module\(\s*['\"]matplotlib"
    r"|sys\.modules\[\s*['\"]matplotlib)",
)
_WRAPPER = Path(__file__).with_name("chart_wrapper.py")


def uses_matplotlib(code: str) -> bool:
    for line in code.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            continue
        if _MATPLOTLIB.search(line):
            return True
    return False


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _pipe(code: str) -> str:
    return f"printf '%s' '{_b64(code)}' | base64 -d"


def python_code(code: str) -> str:
    if uses_matplotlib(code) and _WRAPPER.exists():
        wrapper = _WRAPPER.read_text()
        return wrapper.replace("__USER_CODE_B64__", _b64(code))
    return code


@lru_cache(maxsize=1)
def _node_major_minor() -> tuple[int, int] | None:
    node = shutil.which("node")
    if node is None:
        return None
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.match(r"v(\d+)\.(\d+)", out.strip())
    return (int(match.group(1)), int(match.group(2))) if match else None


def typescript_runner(workdir: Path, env_path: str | None = None) -> str | None:
    """A shell function body that runs the .ts file "$1" with arguments, or None.

    Checked in this order: tsx, ts-node (on PATH or in the work dir's node_modules), Node's
    own type stripping (>= 22.6), then tsc (transpile, ignore type errors as `ts-node -T`
    does, run with node). Never `npx <pkg>` for a missing package: it would download it.
    """
    local_bin = workdir / "node_modules" / ".bin"
    search = f"{local_bin}{os.pathsep}{env_path if env_path is not None else os.environ.get('PATH', '')}"
    tsx = shutil.which("tsx", path=search)
    if tsx:
        return f'{shlex.quote(tsx)} "$@"'
    ts_node = shutil.which("ts-node", path=search)
    if ts_node:
        return (
            f"npm_config_loglevel=error {shlex.quote(ts_node)} -T --ignore-diagnostics 5107 "
            f"-O '{{\"module\":\"CommonJS\"}}' \"$@\""
        )
    version = _node_major_minor()
    if version and version >= (23, 6):
        return 'node --no-warnings "$@"'
    if version and version >= (22, 6):
        return 'node --experimental-strip-types --no-warnings "$@"'
    tsc = shutil.which("tsc", path=search)
    if tsc and version:
        return (
            'dtn_js="${1%.ts}.js"; '
            f'{shlex.quote(tsc)} --module commonjs --target es2020 --skipLibCheck --outDir "$(dirname "$1")" "$1" > /dev/null; '
            'shift; node "$dtn_js" "$@"; dtn_js_rc=$?; rm -f "$dtn_js"; return $dtn_js_rc'
        )
    return None


def build_script(language: str, code: str, argv: list[str], workdir: Path, env_path: str | None = None) -> str:
    args = " ".join(argv)
    if language == "python":
        return f"{_pipe(python_code(code))} | python3 -u - {args}\n"
    js = "process.argv.splice(1, 1);\n" + code
    if language == "javascript":
        return f"{_pipe(js)} | node - {args}\n"
    if language == "typescript":
        runner = typescript_runner(workdir, env_path)
        if runner is None:
            message = (
                "typescript: no TypeScript runner found: install tsx (npm install -g tsx), "
                "ts-node or typescript (tsc), or use Node.js >= 22.6 (it runs .ts files itself)"
            )
            return f"printf '%s\\n' '{message}' >&2\nexit {NO_TS_RUNNER}\n"
        # As Daytona: a temp .ts file, removed afterwards; the runner's exit code is kept.
        return (
            f"dtn_run_ts() {{ {runner}; }}\n"
            'dtn_ts="/tmp/dtn_$$.ts"\n'
            f'{_pipe(js)} > "$dtn_ts"\n'
            f'dtn_run_ts "$dtn_ts" {args}\n'
            'dtn_rc=$?\nrm -f "$dtn_ts"\nexit $dtn_rc\n'
        )
    raise DaemonError(Code.BAD_REQUEST, f"unsupported language: {language}")
