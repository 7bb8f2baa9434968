"""GET /openapi.json: generated from the live route table, valid, and complete."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.helpers import RunningDaemon
from toolbox.app import build_routes
from toolbox.config import Settings
from toolbox.context import Daemon
from toolbox.http import WireModel
from toolbox.openapi.document import build_document, iter_endpoints
from toolbox.openapi.registry import operation


def test_document_lists_every_route_the_daemon_serves(daemon: RunningDaemon, tmp_path: Path) -> None:
    with daemon.client() as http:
        response = http.get("/openapi.json")
        prefixed = http.get("/sbx-test/openapi.json")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert prefixed.json() == response.json()
    doc = response.json()
    assert doc["openapi"].startswith("3.1")

    routes = build_routes(Daemon(Settings(workdir=tmp_path, home=tmp_path)))
    served = {(e.method.lower(), e.path) for e in iter_endpoints(routes)}
    documented = {(method, path) for path, item in doc["paths"].items() for method in item}
    assert served and served == documented

    ports = doc["paths"]["/port/{port}/in-use"]["get"]
    assert ports["parameters"][0]["name"] == "port" and ports["parameters"][0]["in"] == "path"
    ok = ports["responses"]["200"]["content"]["application/json"]["schema"]
    assert doc["components"]["schemas"][ok["$ref"].rsplit("/", 1)[1]]["properties"] == {"isInUse": {"title": "Isinuse", "type": "boolean"}}
    watch = doc["paths"]["/watch"]["post"]
    assert watch["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/WatchRequest")
    assert "201" in watch["responses"]
    stream = doc["paths"]["/watch/stream"]["get"]
    assert stream["x-websocket"] is True and {p["name"] for p in stream["parameters"]} == {"path", "recursive"}
    error = doc["components"]["schemas"]["ErrorResponse"]
    assert set(error["required"]) == {"statusCode", "message", "timestamp", "path"}


class Thing(WireModel):
    name: str = Field(min_length=1)
    size_bytes: int = Field(alias="sizeBytes")


class ThingQuery(WireModel):
    verbose: bool = False


def test_described_and_undescribed_routes() -> None:
    async def plain(request: Request) -> JSONResponse:
        return JSONResponse({})

    @operation("GET", summary="Get a thing", query=ThingQuery, response=list[Thing])
    @operation("PUT", summary="Replace a thing", request=Thing, response=Thing, status=201, errors={409: "taken"})
    async def thing(request: Request) -> JSONResponse:
        return JSONResponse({})

    app = Starlette(routes=[
        Route("/things/{id:int}/raw", plain, methods=["GET", "DELETE"]),
        Route("/things/{id}", thing, methods=["GET", "PUT"]),
    ])
    doc = build_document(app.router.routes, version="1")
    raw = doc["paths"]["/things/{id}/raw"]
    assert set(raw) == {"get", "delete"}  # no HEAD, converter stripped from the path
    assert raw["get"]["parameters"] == [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}]
    assert "content" not in raw["get"]["responses"]["200"]
    get = doc["paths"]["/things/{id}"]["get"]
    assert get["summary"] == "Get a thing"
    assert [p["name"] for p in get["parameters"]] == ["id", "verbose"]
    assert get["responses"]["200"]["content"]["application/json"]["schema"]["type"] == "array"
    put = doc["paths"]["/things/{id}"]["put"]
    assert put["requestBody"]["required"] is True
    assert set(put["responses"]) == {"201", "409", "4XX", "5XX"}
    thing_schema = doc["components"]["schemas"]["Thing"]
    assert set(thing_schema["properties"]) == {"name", "sizeBytes"}
    assert len({op["operationId"] for item in doc["paths"].values() for op in item.values()}) == 4


def test_regression_lone_surrogates_are_refused_not_500(daemon: RunningDaemon) -> None:
    """Found while fuzzing: a JSON-escaped lone surrogate reached os.environ and made a 500."""
    with daemon.client() as http:
        for path, body in (("/env", b'{"set": {"A": "x\\ud800"}}'), ("/init", b'{"token": "\\udfff"}')):
            response = http.post(path, content=body)
            assert response.status_code == 400, response.text
            assert response.json()["code"] == "INVALID_REQUEST_BODY" and "surrogate" in response.json()["message"]
        assert http.post("/env", content='{"set": {"TOOLBOX_OK": "é \\u00e9 \\ud83d\\ude00"}}'.encode()).status_code == 200


def test_undescribed_handlers_get_inputs_inferred_from_their_code() -> None:
    from toolbox.http import parse_body, query_bool, query_int, query_required, query_str

    async def listing(request: Request) -> JSONResponse:
        path = query_required(request, "path")
        depth = query_int(request, "depth", 1, minimum=1, maximum=10)
        hidden = query_bool(request, "hidden")
        sort = request.query_params.get("sort")
        return JSONResponse([path, depth, hidden, sort, query_str(request, "filter", required=True)])

    async def create(request: Request) -> JSONResponse:
        body = await parse_body(request, Thing, optional=True)
        return JSONResponse(body.wire())

    app = Starlette(routes=[Route("/list", listing), Route("/things", create, methods=["POST"])])
    doc = build_document(app.router.routes, version="1")
    listed = doc["paths"]["/list"]["get"]
    assert listed["x-inferred"] is True
    assert {p["name"]: (p["required"], p["schema"]) for p in listed["parameters"]} == {
        "path": (True, {"type": "string"}),
        "depth": (False, {"type": "integer", "minimum": 1, "maximum": 10}),
        "hidden": (False, {"type": "boolean"}),
        "sort": (False, {"type": "string"}),
        "filter": (True, {"type": "string"}),
    }
    created = doc["paths"]["/things"]["post"]
    assert created["requestBody"]["required"] is False
    assert created["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/Thing")
