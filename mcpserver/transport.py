"""One connection pool for every client the MCP tools make.

`client.Client` and each `Toolbox` build an httpx client; without a transport of their own
each would load the TLS trust store (about 100 ms here) and open fresh connections, and
closing one closes its transport. This pool is shared by all of them and outlives their
`close()`: the tool calls of one process reuse keep-alive connections to the proxy.
"""

from __future__ import annotations

import httpx


class SharedTransport(httpx.BaseTransport):
    def __init__(self) -> None:
        self._pool = httpx.HTTPTransport(retries=1)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._pool.handle_request(request)

    def close(self) -> None:
        """A client closing: the pool stays for the next one (`shutdown` ends it)."""

    def shutdown(self) -> None:
        self._pool.close()
