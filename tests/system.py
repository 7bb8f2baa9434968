"""The system tools some tests need, the Debian package that has each, and skips that say so.

A test whose tool is missing skips with `... (apt-get install PKG)` in its reason; the run
then ends with one line that gathers those packages (`tests/conftest.py`), so a fresh
machine gets 0 failures and one command to run everything (`bash .ci/run` does it all).
"""

from __future__ import annotations

import re
import shutil

import pytest

# command -> Debian package
PACKAGES = {
    "git": "git",
    "redis-server": "redis-server",
    "bwrap": "bubblewrap",
    "setpriv": "util-linux",
    "ps": "procps",
    "pgrep": "procps",
    "chromium": "chromium",
    "Xvfb": "xvfb",
    "xdotool": "xdotool",
    "import": "imagemagick",
    "xev": "x11-utils",
    "ssh": "openssh-client",
    "node": "nodejs",
    "skopeo": "skopeo",
    "umoci": "umoci",
    "docker-registry": "docker-registry",
}
_REASON = re.compile(r"\(apt-get install ([a-z0-9][a-z0-9.+\- ]*)\)")


def missing(*tools: str) -> list[str]:
    return [tool for tool in tools if shutil.which(tool) is None]


def reason(*tools: str) -> str:
    """The skip reason for `tools` (the missing ones named, with their packages)."""
    absent = missing(*tools) or list(tools)
    packages = sorted({PACKAGES[tool] for tool in absent})
    return f"{', '.join(absent)} not installed (apt-get install {' '.join(packages)})"


def requires(*tools: str) -> pytest.MarkDecorator:
    """Skip unless every one of `tools` is on PATH."""
    return pytest.mark.skipif(bool(missing(*tools)), reason=reason(*tools))


def skip_unless(*tools: str) -> None:
    """The same, from inside a fixture or test."""
    if missing(*tools):
        pytest.skip(reason(*tools))


def packages_in(reasons: list[str]) -> list[str]:
    """The packages named by skip reasons made here."""
    found: set[str] = set()
    for text in reasons:
        for match in _REASON.finditer(text):
            found.update(match.group(1).split())
    return sorted(found)
