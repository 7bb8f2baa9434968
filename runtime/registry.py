"""The proxy's `file:` registry, written by the control plane (or a bare runtime).

Format (the proxy reloads it when it changes):
``{"sandboxes": {"<id>": {"url": "unix:/path/toolbox.sock", "public": false, "token": "...",
"organization": "<org id>"}}, "api_keys": {"<sha256 hex>": "<org id>"}}``
`organization` and `api_keys` let the proxy accept an organization's API key for that
organization's sandboxes only. Written 0600 to a temporary file and renamed, so the proxy
never reads half a file and no other local user reads a token.
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
        self.api_keys: dict[str, str] = {}

    def set(self, sandbox_id: str, url: str, token: str, public: bool = False,
            organization: str | None = None) -> None:
        entry: dict[str, Any] = {"url": url, "public": public, "token": token}
        if organization is not None:
            entry["organization"] = organization
        self.entries[sandbox_id] = entry
        self.flush()

    def remove(self, sandbox_id: str) -> None:
        if self.entries.pop(sandbox_id, None) is not None:
            self.flush()

    def replace(self, entries: dict[str, dict[str, Any]], api_keys: dict[str, str]) -> None:
        self.entries = entries
        self.api_keys = api_keys
        self.flush()

    def flush(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        document: dict[str, Any] = {"sandboxes": self.entries}
        if self.api_keys:
            document["api_keys"] = self.api_keys
        write_private(self.path, json.dumps(document, indent=1, sort_keys=True).encode())
