"""Where the tools send their calls, with whose key: the control plane's `/api` and the
toolbox of each sandbox behind the proxy (`{proxy}/toolbox/{id}/...`), as a client would.

Over stdio the URL and key come from the environment (`DAYTONA_API_URL`,
`DAYTONA_API_KEY`) or the login file; over HTTP the key is the caller's Bearer key and the
URL the main job's own proxy, dialled at its listen address (`dial`) with the public Host
header, so a domain that only resolves for clients still works.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx


@dataclass(frozen=True)
class Connection:
    api_url: str  # http://localhost:8080/api
    api_key: str
    dial: tuple[str, int] | None = None  # connect here instead of the URL's host

    @property
    def proxy_url(self) -> str:
        url = self.api_url.rstrip("/")
        return url[: -len("/api")] if url.endswith("/api") else url

    def _headers(self) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.api_key}", "X-Daytona-Source": "sandbox-toolbox-mcp"}
        if self.dial is not None:
            headers["Host"] = urlsplit(self.proxy_url).netloc
        return headers

    def _base(self, url: str) -> str:
        if self.dial is None:
            return url
        parts = urlsplit(url)
        host, port = self.dial
        host = f"[{host}]" if ":" in host else host
        return parts._replace(netloc=f"{host}:{port}").geturl()

    def api_client(self, timeout: float | None = 60) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self._base(self.api_url.rstrip("/")), headers=self._headers(),
                                 timeout=timeout)

    def toolbox_client(self, sandbox_id: str, timeout: float | None = 60) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self._base(f"{self.proxy_url}/toolbox/{sandbox_id}"),
                                 headers=self._headers(), timeout=timeout)

    def toolbox_websocket(self, sandbox_id: str, path: str) -> tuple[str, dict[str, str], dict[str, Any]]:
        """(ws:// URL, headers, keyword arguments of `websockets.connect`) for a toolbox path."""
        url = f"{self.proxy_url}/toolbox/{sandbox_id}{path}"
        url = "ws" + url[len("http"):] if url.startswith("http") else url
        headers = {k: v for k, v in self._headers().items() if k != "Host"}
        kwargs: dict[str, Any] = {"proxy": None}
        if self.dial is not None:
            kwargs["host"], kwargs["port"] = self.dial
        return url, headers, kwargs
