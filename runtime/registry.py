"""The proxy's `file:` registry, written by the runtime.

Format (the proxy reloads it when it changes):
``{"sandboxes": {"<id>": {"url": "unix:/path/toolbox.sock", "public": false, "token": "...", "uid": 1000000}}}``
(`uid`: the sandbox's, which the proxy checks with SO_PEERCRED on every new connection)
Written 0600 to a temporary file and renamed, so the proxy never reads half a file and
no other local user reads a token.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runtime.private import write_private


class FileRegistry:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict[str, Any]] = {}

    def set(self, sandbox_id: str, url: str, token: str, public: bool = False, uid: int | None = None) -> None:
        self.entries[sandbox_id] = {"url": url, "public": public, "token": token}
        if uid is not None:
            self.entries[sandbox_id]["uid"] = uid
        self.flush()

    def remove(self, sandbox_id: str) -> None:
        if self.entries.pop(sandbox_id, None) is not None:
            self.flush()

    def flush(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_private(self.path, json.dumps({"sandboxes": self.entries}, indent=1, sort_keys=True).encode())
