"""LSP through the official SDK's LspServer: Python (jedi-language-server) and TypeScript."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest
from daytona._sync.lsp_server import LspServer
from daytona.common.errors import DaytonaError
from daytona.common.lsp_server import LspCompletionPosition, LspLanguageIdLiteral
from daytona_toolbox_api_client import LspApi

from tests.helpers import RunningDaemon, sdk_api_client

SHAPES = textwrap.dedent('''\
    class Circle:
        """A round shape."""

        def area(self) -> float:
            return 3.14


    def make_circle() -> Circle:
        return Circle()
    ''')


def _lsp(daemon: RunningDaemon, language: LspLanguageIdLiteral, project: Path, via_prefix: bool = False) -> LspServer:
    return LspServer(language, str(project), LspApi(sdk_api_client(daemon, via_prefix=via_prefix)))


def test_operations_before_start_are_not_initialized(daemon: RunningDaemon) -> None:
    lsp = _lsp(daemon, "python", daemon.workdir)
    with pytest.raises(DaytonaError) as caught:
        lsp.document_symbols(str(daemon.workdir / "x.py"))
    assert caught.value.status_code == 400 and caught.value.code == "LSP_SERVER_NOT_INITIALIZED"
    with daemon.client() as http:
        response = http.post("/lsp/completions", json={"languageId": "python", "pathToProject": "/nowhere", "uri": "file:///a.py", "position": {"line": 0, "character": 0}})
        stop = http.post("/lsp/stop", json={"languageId": "python", "pathToProject": str(daemon.workdir)})
        unsupported = http.post("/lsp/start", json={"languageId": "cobol", "pathToProject": str(daemon.workdir)})
    assert response.status_code == 400 and response.json()["code"] == "LSP_SERVER_NOT_INITIALIZED"
    assert stop.status_code == 400 and stop.json()["code"] == "LSP_SERVER_NOT_INITIALIZED"
    assert unsupported.status_code == 400 and "cobol" in unsupported.json()["message"]


def test_python_language_server(daemon: RunningDaemon) -> None:
    project = daemon.workdir / "pyproj"
    project.mkdir()
    (project / "shapes.py").write_text(SHAPES)
    (project / "main.py").write_text("import shapes\n\nshapes.\n")
    lsp = _lsp(daemon, "python", project, via_prefix=True)
    lsp.start()
    try:
        lsp.start()  # idempotent
        lsp.did_open(str(project / "main.py"))

        completions = lsp.completions(str(project / "main.py"), LspCompletionPosition(line=2, character=7))
        labels = {item.label for item in completions.items}
        assert {"Circle", "make_circle"} <= labels
        circle = next(item for item in completions.items if item.label == "Circle")
        assert isinstance(circle.documentation, dict) and "kind" in circle.documentation
        assert isinstance(circle.kind, int) and circle.insert_text

        symbols = lsp.document_symbols(str(project / "shapes.py"))
        names = {s.name for s in symbols}
        assert {"Circle", "area", "make_circle"} <= names
        area = next(s for s in symbols if s.name == "area")
        assert area.location.uri.endswith("/pyproj/shapes.py") and area.location.range.start.line == 3

        found = lsp.sandbox_symbols("make_circ")
        assert any(s.name == "make_circle" and s.location.uri.endswith("shapes.py") for s in found)

        relative = lsp.document_symbols("shapes.py")  # the SDK's file://shapes.py: relative to the project
        assert {s.name for s in relative} == names
        lsp.did_close(str(project / "main.py"))
    finally:
        lsp.stop()
    with pytest.raises(DaytonaError) as caught:
        lsp.sandbox_symbols("x")
    assert caught.value.code == "LSP_SERVER_NOT_INITIALIZED"


@pytest.mark.skipif(shutil.which("typescript-language-server") is None,
                    reason="npm install -g typescript typescript-language-server (.ci/run does)")
def test_typescript_language_server(daemon: RunningDaemon) -> None:
    project = daemon.workdir / "tsproj"
    project.mkdir()
    (project / "tsconfig.json").write_text('{"compilerOptions": {"strict": true}, "include": ["*.ts"]}')
    (project / "shapes.ts").write_text(
        "export class Square {\n  constructor(public side: number) {}\n  area(): number { return this.side ** 2; }\n}\n"
        "/** Makes a square. */\nexport function makeSquare(side: number): Square { return new Square(side); }\n")
    (project / "main.ts").write_text("import { makeSquare } from './shapes';\nconst s = makeSquare(2);\ns.\n")
    lsp = _lsp(daemon, "typescript", project)
    lsp.start()
    try:
        lsp.did_open(str(project / "main.ts"))
        completions = lsp.completions(str(project / "main.ts"), LspCompletionPosition(line=2, character=2))
        labels = {item.label for item in completions.items}
        assert {"area", "side"} <= labels
        assert all(isinstance(item.documentation, dict) for item in completions.items)

        symbols = lsp.document_symbols(str(project / "shapes.ts"))
        assert {"Square", "area", "makeSquare"} <= {s.name for s in symbols}

        found = lsp.sandbox_symbols("makeSquare")
        assert any(s.name == "makeSquare" and s.location.uri.endswith("shapes.ts") for s in found)
    finally:
        lsp.stop()
