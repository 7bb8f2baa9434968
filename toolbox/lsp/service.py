"""Language servers keyed by (language, project), and the LSP calls the API offers."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import anyio

from toolbox.errors import Code, DaemonError, bad_request, os_errors
from toolbox.lsp import normalize
from toolbox.lsp.jsonrpc import JsonRpcProcess, RpcError, ServerGone

MAX_SERVERS = 8
START_TIMEOUT = 60.0
REQUEST_TIMEOUT = 20.0
MAX_DOCUMENT = 16 * 1024 * 1024
# LSP `languageId` of a text document, by extension, for the TypeScript server.
_TS_DOCUMENT_IDS = {".ts": "typescript", ".tsx": "typescriptreact", ".js": "javascript",
                    ".jsx": "javascriptreact", ".mjs": "javascript", ".cjs": "javascript",
                    ".mts": "typescript", ".cts": "typescript"}


def _command(language: str) -> list[str]:
    """The language server to run; the SDK's `javascript` uses the TypeScript server."""
    if language == "python":
        if importlib.util.find_spec("jedi_language_server") is not None:
            # Our own interpreter rather than the console script: the script's shebang names
            # the host's venv path, which a sandbox (code at /opt/sandbox-toolbox) lacks.
            return [sys.executable, "-c", "import sys; from jedi_language_server.cli import cli; sys.exit(cli())"]
        found = shutil.which("jedi-language-server")
        if not found:
            raise DaemonError(Code.SERVICE_UNAVAILABLE, "jedi-language-server is not installed: pip install jedi-language-server")
        return [found]
    if language in ("typescript", "javascript"):
        found = shutil.which("typescript-language-server")
        if not found:
            raise DaemonError(
                Code.SERVICE_UNAVAILABLE,
                "typescript-language-server is not installed: npm install -g typescript typescript-language-server",
            )
        return [found, "--stdio"]
    raise bad_request(f"unsupported language {language!r}: use python, typescript or javascript")


def _global_tsserver(command: list[str]) -> str | None:
    """tsserver.js of the TypeScript installed beside typescript-language-server (npm -g)."""
    real = Path(os.path.realpath(command[0]))
    for parent in real.parents:
        if parent.name == "node_modules":
            candidate = parent / "typescript" / "lib" / "tsserver.js"
            return str(candidate) if candidate.exists() else None
    return None


def _initialization_options(language: str, project: Path, command: list[str]) -> dict[str, Any]:
    if language == "python":
        return {}
    # One semantic tsserver: the extra syntax-only server would answer the first requests
    # (completions) from syntax alone, i.e. empty, while the project loads.
    tsserver: dict[str, Any] = {"useSyntaxServer": "never"}
    if not (project / "node_modules" / "typescript").is_dir():  # a project's own TypeScript wins
        path = _global_tsserver(command)
        if path:
            tsserver["path"] = path
    return {"tsserver": tsserver}


@dataclass
class LanguageServer:
    language: str
    project: Path
    rpc: JsonRpcProcess
    versions: dict[str, int] = field(default_factory=dict)  # open document uri -> version
    texts: dict[str, int] = field(default_factory=dict)  # open document uri -> hash of its text
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def document_id(self, path: Path) -> str:
        if self.language == "python":
            return "python"
        return _TS_DOCUMENT_IDS.get(path.suffix.lower(), "typescript")


class LspService:
    def __init__(self) -> None:
        self.servers: dict[tuple[str, str], LanguageServer] = {}
        self._starting: dict[tuple[str, str], asyncio.Future[LanguageServer]] = {}

    # --- lifecycle -------------------------------------------------------------------

    @staticmethod
    def _project(path_to_project: str) -> Path:
        if "\x00" in path_to_project:
            raise bad_request("pathToProject contains a NUL byte")
        project = Path(path_to_project)
        if not project.is_absolute():
            raise bad_request(f"pathToProject must be an absolute path, got {path_to_project!r}")
        return project

    async def start(self, language: str, path_to_project: str) -> None:
        project = self._project(path_to_project)
        command = _command(language)
        key = (language, str(project))
        if key in self.servers and self.servers[key].rpc.alive:
            return  # already running: starting twice is harmless, as on Daytona
        if key in self._starting:
            await asyncio.shield(self._starting[key])
            return
        if not await anyio.to_thread.run_sync(project.is_dir):
            raise bad_request(f"pathToProject {path_to_project!r} is not a directory")
        alive = [s for s in self.servers.values() if s.rpc.alive]
        if len(alive) >= MAX_SERVERS:
            raise DaemonError(Code.CONFLICT, f"{MAX_SERVERS} language servers are running: stop one with /lsp/stop first")
        future: asyncio.Future[LanguageServer] = asyncio.get_running_loop().create_future()
        self._starting[key] = future
        try:
            server = await self._launch(language, project, command)
            self.servers[key] = server
            future.set_result(server)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it themselves
            raise
        finally:
            self._starting.pop(key, None)

    async def _launch(self, language: str, project: Path, command: list[str]) -> LanguageServer:
        rpc = JsonRpcProcess(command, project)
        try:
            await rpc.spawn()
        except OSError as exc:
            raise DaemonError(Code.BAD_REQUEST, f"error starting LSP server {command[0]}: {exc}") from None
        options = await anyio.to_thread.run_sync(_initialization_options, language, project, command)
        try:
            await rpc.request("initialize", {
                "processId": os.getpid(),
                "initializationOptions": options,
                "rootUri": project.as_uri(),
                "rootPath": str(project),
                "workspaceFolders": [{"uri": project.as_uri(), "name": project.name or "/"}],
                "capabilities": {
                    "textDocument": {
                        "completion": {"completionItem": {"documentationFormat": ["markdown", "plaintext"]}},
                        "documentSymbol": {"hierarchicalDocumentSymbolSupport": True},
                        "synchronization": {"didSave": False},
                    },
                    "workspace": {"symbol": {}, "workspaceFolders": True, "configuration": True},
                },
            }, START_TIMEOUT)
            await rpc.notify("initialized", {})
        except (ServerGone, RpcError, asyncio.TimeoutError) as exc:
            await rpc.close(grace=0.5)
            reason = "did not initialize in time" if isinstance(exc, asyncio.TimeoutError) else str(exc)
            raise DaemonError(Code.BAD_REQUEST, f"error starting LSP server: {reason}") from None
        return LanguageServer(language, project, rpc)

    async def stop(self, language: str, path_to_project: str) -> None:
        server = self._get(language, path_to_project)
        del self.servers[(language, str(server.project))]
        await self._shutdown(server)

    @staticmethod
    async def _shutdown(server: LanguageServer) -> None:
        try:
            await server.rpc.request("shutdown", None, 5.0)
            await server.rpc.notify("exit", None)
        except (ServerGone, RpcError, asyncio.TimeoutError):
            pass  # it is killed below either way
        await server.rpc.close()

    async def close(self) -> None:
        servers, self.servers = list(self.servers.values()), {}
        await asyncio.gather(*(self._shutdown(s) for s in servers), return_exceptions=True)

    def _get(self, language: str, path_to_project: str) -> LanguageServer:
        project = self._project(path_to_project)
        server = self.servers.get((language, str(project)))
        if server is None or not server.rpc.alive:
            raise DaemonError(
                Code.LSP_SERVER_NOT_INITIALIZED,
                f"server not initialized: start the {language!r} language server for {path_to_project!r} with /lsp/start first",
            )
        return server

    # --- documents ---------------------------------------------------------------------

    @staticmethod
    def _document_path(server: LanguageServer, uri: str) -> Path:
        """`file:///abs/x.py`; also the SDK's `file://rel/x.py`, relative to the project."""
        if "\x00" in uri:
            raise bad_request("uri contains a NUL byte")
        if not uri.startswith("file://"):
            raise bad_request(f"uri must start with file://, got {uri!r}")
        rest = uri[len("file://"):]
        if rest.startswith("/"):
            path = Path(unquote(urlparse(uri).path))
        else:
            path = server.project / unquote(rest)
        return path

    async def _ensure_open(self, server: LanguageServer, path: Path) -> str:
        """Open (or refresh) the document from disk; returns its URI as the server knows it."""
        uri = path.as_uri()
        with os_errors(str(path)):
            text = await anyio.to_thread.run_sync(_read_text, path)
        version = server.versions.get(uri)
        if version is not None and server.texts.get(uri) == hash(text):
            return uri  # unchanged on disk: nothing to tell the server
        server.texts[uri] = hash(text)
        if version is None:
            server.versions[uri] = 1
            await server.rpc.notify("textDocument/didOpen", {"textDocument": {
                "uri": uri, "languageId": server.document_id(path), "version": 1, "text": text}})
        else:
            server.versions[uri] = version + 1
            await server.rpc.notify("textDocument/didChange", {
                "textDocument": {"uri": uri, "version": version + 1}, "contentChanges": [{"text": text}]})
        return uri

    async def did_open(self, language: str, path_to_project: str, uri: str) -> None:
        server = self._get(language, path_to_project)
        async with server.lock:
            await self._call(server, self._ensure_open(server, self._document_path(server, uri)))

    async def did_close(self, language: str, path_to_project: str, uri: str) -> None:
        server = self._get(language, path_to_project)
        document = self._document_path(server, uri).as_uri()
        async with server.lock:
            server.texts.pop(document, None)
            if server.versions.pop(document, None) is not None:
                await self._call(server, server.rpc.notify("textDocument/didClose", {"textDocument": {"uri": document}}))

    async def completions(self, language: str, path_to_project: str, uri: str, position: dict[str, int],
                          context: dict[str, Any] | None) -> dict[str, Any]:
        server = self._get(language, path_to_project)
        path = self._document_path(server, uri)
        async with server.lock:
            document = await self._call(server, self._ensure_open(server, path))
        params: dict[str, Any] = {"textDocument": {"uri": document}, "position": position}
        if context:
            params["context"] = context
        result = await self._call(server, server.rpc.request("textDocument/completion", params, REQUEST_TIMEOUT))
        return normalize.completion_list(result)

    async def document_symbols(self, language: str, path_to_project: str, uri: str) -> list[dict[str, Any]]:
        server = self._get(language, path_to_project)
        path = self._document_path(server, uri)
        async with server.lock:
            document = await self._call(server, self._ensure_open(server, path))
        result = await self._call(server, server.rpc.request(
            "textDocument/documentSymbol", {"textDocument": {"uri": document}}, REQUEST_TIMEOUT))
        return normalize.symbols(result, document)

    async def workspace_symbols(self, language: str, path_to_project: str, query: str) -> list[dict[str, Any]]:
        server = self._get(language, path_to_project)
        result = await self._call(server, server.rpc.request("workspace/symbol", {"query": query}, REQUEST_TIMEOUT))
        return normalize.symbols(result)

    @staticmethod
    async def _call(server: LanguageServer, awaitable: Any) -> Any:
        """Language-server failures as the 4xx Daytona sends for them."""
        try:
            return await awaitable
        except RpcError as exc:
            raise bad_request(f"language server error {exc.code}: {exc}") from None
        except asyncio.TimeoutError:
            raise DaemonError(Code.REQUEST_TIMEOUT, f"the {server.language} language server did not answer within {REQUEST_TIMEOUT:.0f} s") from None
        except ServerGone as exc:
            raise DaemonError(Code.LSP_SERVER_NOT_INITIALIZED, f"{exc}: start it again with /lsp/start") from None


def _read_text(path: Path) -> str:
    with open(path, "rb") as handle:
        data = handle.read(MAX_DOCUMENT + 1)
    if len(data) > MAX_DOCUMENT:
        raise DaemonError(Code.BAD_REQUEST, f"{path} is larger than {MAX_DOCUMENT} bytes")
    return data.decode("utf-8", "replace")
