"""HTTP layer of the LSP endpoints (toolbox-api.md §12)."""

from __future__ import annotations

from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from toolbox.context import Daemon
from toolbox.http import WireModel, json_response, parse_body, query_required, query_str
from toolbox.lsp.service import LspService
from toolbox.openapi.registry import operation

NOT_STARTED = {400: "LSP_SERVER_NOT_INITIALIZED: no server was started for this language and project"}


class LspServerRequest(WireModel):
    language_id: str = Field(alias="languageId", description="python, typescript or javascript")
    path_to_project: str = Field(alias="pathToProject", description="Absolute project directory")


class LspDocumentRequest(LspServerRequest):
    uri: str = Field(description="file:///abs/path (or file://relative/to/project)")


class LspPosition(WireModel):
    line: int = Field(ge=0)
    character: int = Field(ge=0)


class CompletionContext(WireModel):
    trigger_kind: int = Field(alias="triggerKind", ge=1, le=3)
    trigger_character: str | None = Field(default=None, alias="triggerCharacter")


class LspCompletionParams(LspDocumentRequest):
    position: LspPosition
    context: CompletionContext | None = None


class MarkupContent(WireModel):
    kind: str
    value: str


class CompletionItem(WireModel):
    label: str
    kind: int
    detail: str
    documentation: MarkupContent
    sort_text: str = Field(alias="sortText")
    filter_text: str = Field(alias="filterText")
    insert_text: str = Field(alias="insertText")


class CompletionList(WireModel):
    is_incomplete: bool = Field(alias="isIncomplete")
    items: list[CompletionItem]


class LspRange(WireModel):
    start: LspPosition
    end: LspPosition


class LspLocation(WireModel):
    uri: str
    range: LspRange


class LspSymbol(WireModel):
    kind: int
    name: str
    location: LspLocation


class DocumentSymbolsQuery(WireModel):
    language_id: str = Field(alias="languageId")
    path_to_project: str = Field(alias="pathToProject")
    uri: str


class WorkspaceSymbolsQuery(WireModel):
    query: str = ""
    language_id: str = Field(alias="languageId")
    path_to_project: str = Field(alias="pathToProject")


def build(daemon: Daemon) -> list[BaseRoute]:
    service = LspService()
    daemon.on_shutdown(service.close)

    @operation(summary="Start the language server for a language and project (idempotent)",
               request=LspServerRequest, errors={400: "unsupported language or not a directory"})
    async def start(request: Request) -> Response:
        body = await parse_body(request, LspServerRequest)
        await service.start(body.language_id, body.path_to_project)
        return Response(status_code=200)

    @operation(summary="Stop the language server", request=LspServerRequest, errors=NOT_STARTED)
    async def stop(request: Request) -> Response:
        body = await parse_body(request, LspServerRequest)
        await service.stop(body.language_id, body.path_to_project)
        return Response(status_code=200)

    @operation(summary="Open a document (read from disk) in the language server",
               request=LspDocumentRequest, errors=NOT_STARTED)
    async def did_open(request: Request) -> Response:
        body = await parse_body(request, LspDocumentRequest)
        await service.did_open(body.language_id, body.path_to_project, body.uri)
        return Response(status_code=200)

    @operation(summary="Close a document", request=LspDocumentRequest, errors=NOT_STARTED)
    async def did_close(request: Request) -> Response:
        body = await parse_body(request, LspDocumentRequest)
        await service.did_close(body.language_id, body.path_to_project, body.uri)
        return Response(status_code=200)

    @operation(summary="Completions at a position (the document is re-read from disk)",
               request=LspCompletionParams, response=CompletionList, errors=NOT_STARTED)
    async def completions(request: Request) -> JSONResponse:
        body = await parse_body(request, LspCompletionParams)
        context = body.context.wire() if body.context else None
        return json_response(await service.completions(
            body.language_id, body.path_to_project, body.uri, body.position.wire(), context))

    @operation(summary="Symbols of one document", query=DocumentSymbolsQuery, response=list[LspSymbol], errors=NOT_STARTED)
    async def document_symbols(request: Request) -> JSONResponse:
        return json_response(await service.document_symbols(
            query_required(request, "languageId"), query_required(request, "pathToProject"), query_required(request, "uri")))

    @operation(summary="Symbols matching a query across the project", query=WorkspaceSymbolsQuery,
               response=list[LspSymbol], errors=NOT_STARTED)
    async def workspace_symbols(request: Request) -> JSONResponse:
        return json_response(await service.workspace_symbols(
            query_required(request, "languageId"), query_required(request, "pathToProject"),
            query_str(request, "query", default="") or ""))

    return [
        Route("/lsp/start", start, methods=["POST"]),
        Route("/lsp/stop", stop, methods=["POST"]),
        Route("/lsp/did-open", did_open, methods=["POST"]),
        Route("/lsp/did-close", did_close, methods=["POST"]),
        Route("/lsp/completions", completions, methods=["POST"]),
        Route("/lsp/document-symbols", document_symbols, methods=["GET"]),
        Route("/lsp/workspacesymbols", workspace_symbols, methods=["GET"]),
    ]
