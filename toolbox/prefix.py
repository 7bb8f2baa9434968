"""Accept every route both bare (`/files`) and behind one `/{sandboxId}` segment.

The SDK calls `{toolboxProxyUrl}/{sandboxId}/files`; Daytona's proxy strips the segment,
but a client pointed straight at the daemon keeps it (toolbox-api.md §1.2).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send


class SandboxPrefix:
    def __init__(self, app: ASGIApp, sandbox_id: str | None, top_segments: frozenset[str]) -> None:
        self.app = app
        self.sandbox_id = sandbox_id
        # First path segments of our own routes; with no configured id, any other first
        # segment followed by a known route is taken as the sandbox id.
        self.top_segments = top_segments

    def _strip(self, path: str) -> str | None:
        segment, sep, rest = path[1:].partition("/")
        if not sep:
            return None
        if self.sandbox_id is not None:
            return "/" + rest if segment == self.sandbox_id else None
        if segment in self.top_segments:
            return None
        first_of_rest = rest.partition("/")[0]
        return "/" + rest if first_of_rest in self.top_segments else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            stripped = self._strip(scope["path"])
            if stripped is not None:
                scope = dict(scope)
                scope["path"] = stripped
                raw = scope.get("raw_path")
                if raw:
                    # raw_path keeps percent-encoding; drop its first segment the same way.
                    _, _, raw_rest = raw[1:].partition(b"/")
                    scope["raw_path"] = b"/" + raw_rest
        await self.app(scope, receive, send)
