"""runtime/images/dockerignore.py: docker's .dockerignore rules, and the project's own ignore
files staging exactly what the images' COPY lines name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runtime.images import dockerignore

IGNORE = """# comment
*
!pyproject.toml
!README.md
!toolbox/
!proxy/
**/__pycache__
toolbox/terminal/node_modules
"""


@pytest.mark.parametrize("path, left_out", [
    ("pyproject.toml", False), ("README.md", False), ("setup.cfg", True), (".git/config", True),
    ("toolbox/app.py", False), ("toolbox/__pycache__/app.cpython-311.pyc", True),
    ("toolbox/deep/er/__pycache__", True), ("__pycache__/x.pyc", True),
    ("toolbox/terminal/node_modules/x/index.js", True), ("toolbox/terminal/static/index.html", False),
    ("proxy/cli.py", False), ("runtime/cli.py", True), ("toolboxes/x", True),
])
def test_docker_rules(path: str, left_out: bool) -> None:
    assert dockerignore.excluded(dockerignore.parse(IGNORE), path) is left_out


def test_patterns() -> None:
    def out(patterns: str, path: str) -> bool:
        return dockerignore.excluded(dockerignore.parse(patterns), path)

    assert out("*.md", "README.md") and not out("*.md", "docs/x.md")  # * never crosses /
    assert out("**/*.md", "docs/x.md") and out("**/*.md", "x.md")
    assert out("docs/**", "docs/a/b/c") and not out("docs/**", "docsx")
    assert out("/build/", "build/out.o")  # cleaned: leading and trailing / dropped
    assert out("a?c", "abc") and not out("a?c", "a/c")
    assert out("[ab]x", "bx") and not out("[!ab]x", "bx")
    assert not out("*\n!keep\n", "keep/file") and out("*\n!keep\nkeep/tmp\n", "keep/tmp/x")


def test_staging_copies_only_what_the_ignore_file_keeps(tmp_path: Path) -> None:
    source, dest = tmp_path / "src", tmp_path / "dest"
    for name in ("pyproject.toml", "README.md", "toolbox/app.py", "toolbox/__pycache__/app.pyc",
                 "toolbox/terminal/node_modules/m/i.js", ".venv/lib/x.py", "runtime/cli.py"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(name)
    os.chmod(source / "toolbox/app.py", 0o750)
    os.symlink("app.py", source / "toolbox/link")
    dest.mkdir()
    copied = dockerignore.stage(source, dockerignore.parse(IGNORE), dest)
    found = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if not p.is_dir())
    assert found == ["README.md", "pyproject.toml", "toolbox/app.py", "toolbox/link"] and copied == 4
    assert (dest / "toolbox/app.py").stat().st_mode & 0o777 == 0o750
    assert os.readlink(dest / "toolbox/link") == "app.py"


@pytest.mark.parametrize("name", ["sandbox", "proxy"])
def test_the_images_ignore_files_keep_what_their_copy_lines_name(name: str) -> None:
    from tests.test_images import REPO, dockerfile

    patterns = dockerignore.parse((REPO / "images" / name / "Dockerfile.dockerignore").read_text())
    for copy in dockerfile(name)["COPY"]:
        *sources, _ = copy.split()
        for source in sources:
            assert not dockerignore.excluded(patterns, source), f"{name}: COPY {source} is ignored"
