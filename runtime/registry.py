"""The proxy's `file:` registry, written by the runtime.

Format (the proxy reloads it when it changes):
``{"sandboxes": {"<id>": {"url": "unix:/path/toolbox.sock", "public": false, "token": "..."}}}``
Written to a temporary file and renamed, so the proxy never reads half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class FileRegistry:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict[str, Any]] = {}

    def set(self, sandbox_id: str, url: str, token: str, public: bool = False) -> None:
        self.entries[sandbox_id] = {"url": url, "public": public, "token": token}
        self.flush()

    def remove(self, sandbox_id: str) -> None:
        if self.entries.pop(sandbox_id, None) is not None:
            self.flush()

    def flush(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"sandboxes": self.entries}, indent=1, sort_keys=True))
        os.replace(tmp, self.path)
