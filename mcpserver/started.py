"""The sessions `start_command` made over stdio, deleted when the MCP session ends.

Over stdio one process serves one agent: when its client hangs up, nobody holds the ids any
more, and each session would keep a shell, and whatever the command still runs, in the
sandbox until the sandbox stops. So `mcp start` deletes them on the way out (the daemon
kills each session's whole process tree), within a bounded time: the official client
sends SIGTERM 2 s after closing stdin. Over HTTP the endpoint is stateless (no session
ever ends there), so its commands run until stop_command, or the sandbox stops.
"""

from __future__ import annotations

import threading
import time

from client import ApiError, Client


class StartedCommands:
    def __init__(self) -> None:
        self._lock = threading.Lock()  # tool calls run in worker threads
        self._sessions: dict[str, set[str]] = {}  # sandbox id -> session ids

    def add(self, sandbox_id: str, session_id: str) -> None:
        with self._lock:
            self._sessions.setdefault(sandbox_id, set()).add(session_id)

    def clean(self, client: Client, toolbox_url: str, timeout: float = 1.5) -> int:
        """Delete every session recorded, the sandboxes in parallel; returns how many went.
        A sandbox gone or stopped meanwhile has nothing left to delete."""
        with self._lock:
            sessions, self._sessions = self._sessions, {}
        deleted: list[str] = []

        def one(sandbox_id: str, ids: set[str]) -> None:
            record = {"id": sandbox_id, "state": "started", "toolboxProxyUrl": toolbox_url}
            try:
                with client.toolbox(record, timeout=timeout) as toolbox:
                    for session_id in ids:
                        try:
                            toolbox.delete_session(session_id)
                            deleted.append(session_id)
                        except ApiError as exc:
                            if exc.status not in (404, 410):
                                raise
            except ApiError:
                pass  # the sandbox is gone, stopped or unreachable: so are its sessions, or soon

        # Daemon threads: a call still hanging at the deadline must not hold up the exit.
        workers = [threading.Thread(target=one, args=item, daemon=True) for item in sessions.items()]
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + timeout
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        return len(deleted)
