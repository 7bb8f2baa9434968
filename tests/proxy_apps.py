"""Small real upstream apps for the forwarder and proxy tests (run as a subprocess).

`python -m tests.proxy_apps --host 127.0.0.1 --port P`: a raw ASGI app on uvicorn with
  GET  /info/...      JSON: method, raw path, query, headers as the app saw them
  POST /count         streams the request body in, answers its length and sha256
  GET  /big?mb=N      N MiB of b"x" streamed in 1 MiB chunks with Content-Length
  GET  /sse           one event at once, a second after 1.5 s (flush test)
  GET  /gzip          a gzip-encoded body with Content-Encoding: gzip
  GET  /crash         the process exits mid-response
  GET  /slow?s=N      answers after N seconds
  GET  /spoof         answers with an X-Proxy-Error header of its own
  GET  /redirect?to=L 302 to L
  GET  /hop           response with hop-by-hop headers (Connection: x-internal, Keep-Alive)
  ANY  /stream?id=N   a chunk every 0.1 s for 30 s; /stream-state says if the client left
  GET  /last-close    code and reason of the last WebSocket the client closed
  OPTIONS /cors       a CORS preflight answer allowing the request's Origin, plus a header
                      and a body that must not reach an unauthenticated caller; it records
                      what it received (headers, query, body) for GET /last-preflight
  OPTIONS /no-cors    a 405, as from an app that does not do CORS (also recorded)
  GET  /cookies       Set-Cookie headers planting cookies on the parent domain and under
                      the proxy's own cookie names
  WS   /ws            echo (text and binary); picks the last offered subprotocol;
                      a text "close:CODE:REASON" closes with that code and reason
  WS   /ws-hello      as /ws, but sends "hello" right after accepting
  WS   /ws-slow       as /ws, but accepts after 1 s
  WS   /ws-sink?s=N   accepts, never reads (backpressure test), hangs up after N s
  WS   /ws-flood?mb=N sends N MiB in 1 MiB messages as fast as it can, then hangs up
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import json
import os
from urllib.parse import parse_qs

import uvicorn
from starlette.types import Receive, Scope, Send

LAST_CLOSE: dict[str, object] = {}
LAST_PREFLIGHT: dict[str, object] = {}
STREAM: dict[str, str] = {}
GZIP_BODY = gzip.compress(b"compressed hello " * 100, mtime=0)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    query = parse_qs(scope["query_string"].decode())
    if scope["type"] == "websocket":
        await websocket(scope, receive, send)
        return
    if path.startswith("/info"):
        body = json.dumps({
            "method": scope["method"],
            "raw_path": scope["raw_path"].decode("latin-1"),
            "query": scope["query_string"].decode("latin-1"),
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
        }).encode()
        await respond(send, 200, body, b"application/json")
    elif path == "/count":
        digest = hashlib.sha256()
        size = 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            digest.update(chunk)
            if not message.get("more_body"):
                break
        await respond(send, 200, json.dumps({"size": size, "sha256": digest.hexdigest()}).encode(), b"application/json")
    elif path == "/big":
        mb = int(query.get("mb", ["1"])[0])
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(mb << 20).encode()), (b"content-type", b"application/octet-stream")]})
        chunk = b"x" * (1 << 20)
        for _ in range(mb):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/sse":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"data: first\n\n", "more_body": True})
        await asyncio.sleep(1.5)
        await send({"type": "http.response.body", "body": b"data: second\n\n", "more_body": False})
    elif path == "/gzip":
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-encoding", b"gzip"), (b"content-type", b"text/plain"),
            (b"content-length", str(len(GZIP_BODY)).encode())]})
        await send({"type": "http.response.body", "body": GZIP_BODY})
    elif path == "/crash":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1000000")]})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        await asyncio.sleep(0.05)
        os._exit(3)
    elif path == "/slow":
        await asyncio.sleep(float(query.get("s", ["1"])[0]))
        await respond(send, 200, b"slow done", b"text/plain")
    elif path == "/stream":
        await stream(query.get("id", [""])[0], receive, send)
    elif path == "/stream-state":
        await respond(send, 200, json.dumps(STREAM).encode(), b"application/json")
    elif path == "/last-close":
        await respond(send, 200, json.dumps(LAST_CLOSE).encode(), b"application/json")
    elif path in ("/cors", "/no-cors") and scope["method"] == "OPTIONS":
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        LAST_PREFLIGHT.clear()
        LAST_PREFLIGHT.update(headers=[[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
                              query=scope["query_string"].decode("latin-1"), body=body.decode("latin-1"))
        if path == "/no-cors":
            await respond(send, 405, b"no", b"text/plain")
            return
        origin = dict(scope["headers"]).get(b"origin", b"")
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"access-control-allow-origin", origin), (b"access-control-allow-credentials", b"true"),
            (b"access-control-allow-methods", b"GET, POST"), (b"access-control-allow-headers", b"x-daytona-preview-token"),
            (b"vary", b"Origin"), (b"x-app-secret", b"leaked"), (b"content-length", b"11")]})
        await send({"type": "http.response.body", "body": b"secret body"})
    elif path == "/last-preflight":
        await respond(send, 200, json.dumps(LAST_PREFLIGHT).encode(), b"application/json")
    elif path == "/cookies":
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"set-cookie", b"planted=1; Domain=.preview.test; Path=/"),
            (b"set-cookie", b"own=2; Path=/; domain=preview.test; HttpOnly"),
            (b"set-cookie", b"sbx-preview-auth=forged; Path=/"),
            (b"set-cookie", b"__HOST-sbx-preview-auth=forged; Path=/; Secure"),
            (b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
    elif path == "/hop":
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"connection", b"x-internal"), (b"x-internal", b"secret"), (b"keep-alive", b"timeout=5"),
            (b"x-kept", b"yes"), (b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
    elif path == "/redirect":
        await send({"type": "http.response.start", "status": 302,
                    "headers": [(b"location", query.get("to", ["/"])[0].encode()), (b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/spoof":
        await send({"type": "http.response.start", "status": 404,
                    "headers": [(b"x-proxy-error", b"sandbox-not-found"), (b"content-length", b"3")]})
        await send({"type": "http.response.body", "body": b"app"})
    else:
        await respond(send, 404, b"app 404", b"text/plain")


async def stream(name: str, receive: Receive, send: Send) -> None:
    """A chunk every 0.1 s for up to 30 s; records whether the client hung up."""
    while (await receive()).get("more_body"):
        pass
    STREAM[name] = "streaming"
    gone = asyncio.Event()

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    watcher = asyncio.create_task(watch())
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    for _ in range(300):
        if gone.is_set():
            STREAM[name] = "client gone"
            return
        await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
        await asyncio.sleep(0.1)
    watcher.cancel()
    STREAM[name] = "finished"
    await send({"type": "http.response.body", "body": b""})


async def respond(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def websocket(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    path = scope["path"]
    if path == "/ws-slow":
        await asyncio.sleep(1)
    offered = scope.get("subprotocols") or []
    await send({"type": "websocket.accept", "subprotocol": offered[-1] if offered else None})
    if path == "/ws-sink":
        await asyncio.sleep(float(parse_qs(scope["query_string"].decode()).get("s", ["60"])[0]))
        return
    if path == "/ws-flood":
        for _ in range(int(parse_qs(scope["query_string"].decode()).get("mb", ["1"])[0])):
            await send({"type": "websocket.send", "bytes": b"f" * (1 << 20)})
        return
    if path == "/ws-hello":
        await send({"type": "websocket.send", "text": "hello"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            LAST_CLOSE.update(code=message.get("code"), reason=message.get("reason", ""))
            return
        text = message.get("text")
        if text is not None and text.startswith("close:"):
            _, code, reason = text.split(":", 2)
            await send({"type": "websocket.close", "code": int(code), "reason": reason})
            return
        if text is not None:
            await send({"type": "websocket.send", "text": text})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes")})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", ws="websockets-sansio",
                            ws_max_size=128 * 1024 * 1024, lifespan="on")
    server = uvicorn.Server(config)

    async def run() -> None:
        await server.serve()

    asyncio.run(run())


if __name__ == "__main__":
    main()
