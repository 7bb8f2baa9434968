"""`python -m runtime api-key create|revoke`: API keys, made and revoked by the running
main job when there is one, so the proxy takes a new key, and drops a revoked one, before
the command returns (`ControlPlane.create_key` / `revoke_key` wait for it).

The main job serves `POST /runtime/api-keys` and `POST /runtime/api-keys/revoke` on its
control socket only (a 0700 directory: whoever may read the state directory may make
keys, as before); the proxy never forwards them. With no main job running, the command
writes the database itself, and the next start publishes the change.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import httpx
    from starlette.requests import Request
    from starlette.routing import Route

    from controlplane.auth import Keys
    from controlplane.plane import ControlPlane

T = TypeVar("T")

CREATE = "/runtime/api-keys"
REVOKE = "/runtime/api-keys/revoke"


def routes(plane: ControlPlane) -> list[Route]:
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from controlplane.errors import NotFound

    async def create(request: Request) -> JSONResponse:
        created = await plane.create_key(await _field(request, "organization"))
        return JSONResponse({"key": created.key, "organizationId": created.organization_id,
                             "organizationName": created.organization_name}, status_code=201)

    async def revoke(request: Request) -> Response:
        if not await plane.revoke_key(await _field(request, "key")):
            raise NotFound("no such API key")
        return Response(status_code=204)

    return [Route(CREATE, create, methods=["POST"]), Route(REVOKE, revoke, methods=["POST"])]


async def _field(request: Request, name: str) -> str:
    from controlplane.errors import BadRequest

    try:
        body = await request.json()
    except ValueError:
        body = None
    value = body.get(name) if isinstance(body, dict) else None
    if not isinstance(value, str):
        raise BadRequest(f"send a JSON object with a string '{name}'")
    return value  # Keys judges it


def _ask(state: Path, path: str, body: dict[str, str]) -> httpx.Response | None:
    """POST to the main job's control socket; None when no main job listens there."""
    import httpx

    socket = state / "control" / "api.sock"
    if not socket.exists():
        return None
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(socket)), base_url="http://controlplane",
                      timeout=60) as client:
        try:
            return client.post(path, json=body)
        except httpx.ConnectError:
            # A socket a dead main job left. Only a refused connection: a request that got
            # there and timed out may have made the key, and must not make a second one.
            return None


def _error(response: httpx.Response) -> str:
    try:
        message = response.json().get("message")
    except ValueError:
        message = None
    return f"{message or response.text} (HTTP {response.status_code})"


def create(state: Path, organization: str) -> int:
    response = _ask(state, CREATE, {"organization": organization})
    if response is not None:
        if response.is_error:
            return _fail(_error(response))
        data = response.json()
        key, org_id, org_name, when = data["key"], data["organizationId"], data["organizationName"], "now"
    else:
        from controlplane.errors import ApiError

        try:
            made = _with_keys(state, lambda keys: keys.create_key(organization))
        except ApiError as exc:
            return _fail(exc.message)
        key, org_id, org_name, when = made.key, made.organization_id, made.organization_name, "from the next start"
    print(f"DAYTONA_API_KEY={key}")
    print(f"# organization {org_name} ({org_id}); shown once, stored hashed; the proxy accepts it {when}",
          file=sys.stderr)
    return 0


def revoke(state: Path, key: str) -> int:
    if key == "-":
        key = sys.stdin.readline().strip()  # keeps the key out of `ps`
    response = _ask(state, REVOKE, {"key": key})
    if response is not None:
        if response.status_code == 404:
            return _fail("no such API key")
        if response.is_error:
            return _fail(_error(response))
    elif not _with_keys(state, lambda keys: keys.revoke(key)):
        return _fail("no such API key")
    print("revoked: the API, the proxy and MCP refuse it", file=sys.stderr)
    return 0


def _with_keys(state: Path, work: Callable[[Keys], T]) -> T:
    """`work(Keys)` on the state directory's database, with no main job running."""
    from controlplane.auth import Keys
    from controlplane.plane import PlaneConfig
    from controlplane.sandboxes.routes import PublicUrls
    from controlplane.store.db import migrate, open_engine

    config = PlaneConfig(state_dir=state, urls=PublicUrls("http", "localhost", 8080),
                         registry_path=state / "registry.json")
    engine = open_engine(config.url)
    try:
        migrate(engine)
        return work(Keys(engine))
    finally:
        engine.dispose()


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1
