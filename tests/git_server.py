"""Test fixtures for git: local repositories and a real authenticated git HTTP server.

`GitHttpServer` is a threaded `http.server` that checks HTTP Basic credentials and hands
each request to `git http-backend` (CGI), so clone/pull/push go over git's real smart HTTP
protocol, with real 401 challenges.
"""

from __future__ import annotations

import base64
import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

IDENTITY = {
    "GIT_AUTHOR_NAME": "Fixture",
    "GIT_AUTHOR_EMAIL": "fixture@example.com",
    "GIT_COMMITTER_NAME": "Fixture",
    "GIT_COMMITTER_EMAIL": "fixture@example.com",
}


def run_git(cwd: Path, *args: str) -> str:
    """git in the test process, isolated from the machine's user and system config."""
    env = {
        **os.environ,
        **IDENTITY,
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
    }
    result = subprocess.run(
        ["git", "-c", "safe.directory=*", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {result.stderr}")
    return result.stdout


def make_origin(root: Path, name: str = "origin.git", files: dict[str, str] | None = None) -> Path:
    """A bare repository with one commit on `main` (plus the given files)."""
    bare = root / name
    seed = root / f"{name}-seed"
    run_git(root, "init", "-q", "--bare", "-b", "main", str(bare))
    run_git(root, "init", "-q", "-b", "main", str(seed))
    for rel, content in (files or {"README.md": "hello\n"}).items():
        target = seed / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    run_git(seed, "add", "-A")
    run_git(seed, "commit", "-q", "-m", "initial")
    run_git(seed, "push", "-q", str(bare), "main")
    return bare


def push_commit(origin: Path, work: Path, filename: str, content: str, branch: str = "main") -> str:
    """Another client's commit on `origin` (cloned into `work` if needed); returns its sha."""
    if not work.exists():
        run_git(origin.parent, "clone", "-q", "-b", branch, str(origin), str(work))
    (work / filename).write_text(content)
    run_git(work, "add", "-A")
    run_git(work, "commit", "-q", "-m", f"add {filename}")
    run_git(work, "push", "-q", "origin", branch)
    return run_git(work, "rev-parse", "HEAD").strip()


@dataclass
class GitHttpServer:
    """Smart-HTTP git server over `root`, requiring `username`/`password` on every request."""

    root: Path
    username: str
    password: str
    delay: float = 0.0  # seconds to stall each upload-pack POST (makes clones slow)
    attempts: list[tuple[str, str, bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        server = self
        expected = "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self._serve()

            def do_POST(self) -> None:
                self._serve()

            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks: list[bytes] = []
                    while True:
                        size = int(self.rfile.readline().strip().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _serve(self) -> None:
                authorized = self.headers.get("Authorization") == expected
                server.attempts.append((self.command, self.path, authorized))
                body = self._read_body()
                if not authorized:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if server.delay and self.command == "POST" and "upload-pack" in self.path:
                    time.sleep(server.delay)
                path, _, query = self.path.partition("?")
                env = {
                    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                    "GIT_PROJECT_ROOT": str(server.root),
                    "GIT_HTTP_EXPORT_ALL": "1",
                    "GIT_CONFIG_NOSYSTEM": "1",
                    "GIT_CONFIG_GLOBAL": "/dev/null",
                    "REQUEST_METHOD": self.command,
                    "PATH_INFO": path,
                    "QUERY_STRING": query,
                    "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                    "CONTENT_LENGTH": str(len(body)),
                    "REMOTE_USER": server.username,
                    "REMOTE_ADDR": "127.0.0.1",
                }
                if self.headers.get("Content-Encoding"):
                    env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
                if self.headers.get("Git-Protocol"):
                    env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
                result = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True)
                head, _, payload = result.stdout.partition(b"\r\n\r\n")
                if not payload and b"\n\n" in head:
                    head, _, payload = result.stdout.partition(b"\n\n")
                status = 200
                headers = []
                for line in head.decode("latin-1").splitlines():
                    name, _, value = line.partition(":")
                    if name.lower() == "status":
                        status = int(value.strip().split()[0])
                    elif name:
                        headers.append((name, value.strip()))
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._httpd.server_address[1]}"

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
