"""Daemon settings: read once at start-up, passed to every service."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    """Everything the daemon needs to know about its sandbox.

    `workdir` is the default for relative paths, new sessions, code runs and PTYs;
    `home` is the user's home directory (``$HOME``); `state_dir` holds the daemon's own
    files (session logs, output spill files) so they survive a daemon restart.
    """

    workdir: Path
    home: Path
    sandbox_id: str | None = None
    state_dir: Path = field(default_factory=lambda: Path.home() / ".daytona")

    @classmethod
    def from_environment(
        cls, workdir: str | None = None, sandbox_id: str | None = None
    ) -> "Settings":
        home = Path(os.environ.get("HOME") or Path.home())
        resolved_workdir = Path(workdir or os.getcwd()).resolve()
        state_dir = Path(os.environ.get("TOOLBOX_STATE_DIR") or home / ".daytona")
        return cls(
            workdir=resolved_workdir,
            home=home,
            sandbox_id=sandbox_id or None,
            state_dir=state_dir,
        )

    def resolve(self, path: str) -> Path:
        """A client path made absolute: relative paths are relative to the work dir."""
        expanded = os.path.expanduser(path) if path.startswith("~") else path
        return Path(self.workdir, expanded)
