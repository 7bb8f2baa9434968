"""Proxy settings; the CLI fills them from options or the environment (`PROXY_*`)."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from proxy.auth import COOKIE_HTTP, COOKIE_HTTPS

DEFAULT_PRIVATE_PORTS = frozenset({2280, 22222, 33333})  # toolbox, terminal, recordings


@dataclass
class ProxyConfig:
    domain: str
    registry: str
    public_url: str = ""  # scheme://domain[:port] used in minted URLs; never taken from a request
    api_keys: tuple[str, ...] = ()
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    preserve_host: bool = False
    private_ports: frozenset[int] = DEFAULT_PRIVATE_PORTS
    cookie_max_age: int = 3600
    # "lax", or "none" for previews embedded in another site's iframe (https only; the
    # cookie is then Partitioned: a separate jar per embedding site, see docs/proxy.md).
    cookie_samesite: str = "lax"
    cache_ttl: float = 2.0
    activity_interval: float = 5.0
    # Where `/api/...` on the proxy's bare host goes (the control plane): `unix:PATH` or
    # `http://host:port`; empty: nothing is served there.
    api_upstream: str = ""

    def __post_init__(self) -> None:
        self.domain = self.domain.strip().lower().rstrip(".")
        if not self.public_url:
            self.public_url = f"http://{self.domain}"
        self.public_url = self.public_url.rstrip("/")
        self.cookie_samesite = self.cookie_samesite.lower()
        if self.cookie_samesite not in ("lax", "none"):
            raise ValueError(f"cookie SameSite must be 'lax' or 'none', not {self.cookie_samesite!r}")
        if self.cookie_samesite == "none" and self.public_scheme != "https":
            raise ValueError("SameSite=None cookies need an https public URL: browsers drop them over http")
        if self.api_upstream and not (
                (self.api_upstream.startswith("unix:") and len(self.api_upstream) > len("unix:"))
                or (urlsplit(self.api_upstream).scheme == "http" and urlsplit(self.api_upstream).hostname)):
            raise ValueError(f"the API upstream must be unix:PATH or http://host:port, not {self.api_upstream!r}")

    @property
    def public_scheme(self) -> str:
        return urlsplit(self.public_url).scheme or "http"

    @property
    def cookie_name(self) -> str:
        """The preview session cookie's name: `__Host-` (host-only, Secure) over https."""
        return COOKIE_HTTPS if self.public_scheme == "https" else COOKIE_HTTP

    @property
    def public_port(self) -> int:
        parts = urlsplit(self.public_url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    def preview_url(self, label: str, port: int) -> str:
        parts = urlsplit(self.public_url)
        return f"{parts.scheme}://{port}-{label}.{parts.netloc}"

    @classmethod
    def from_environment(cls) -> "ProxyConfig":
        """Used by each uvicorn worker process: the CLI exported every option."""
        env = os.environ
        keys = [k.strip() for k in env.get("PROXY_API_KEYS", "").split(",") if k.strip()]
        keys_file = env.get("PROXY_API_KEYS_FILE")
        if keys_file:
            with open(keys_file, encoding="utf-8") as handle:
                keys += [line.strip() for line in handle if line.strip() and not line.startswith("#")]
        secret = env.get("PROXY_SECRET")
        ports = env.get("PROXY_PRIVATE_PORTS")
        return cls(
            domain=env["PROXY_DOMAIN"],
            registry=env["PROXY_REGISTRY"],
            public_url=env.get("PROXY_PUBLIC_URL", ""),
            api_keys=tuple(keys),
            secret=secret.encode() if secret else secrets.token_bytes(32),
            preserve_host=env.get("PROXY_PRESERVE_HOST", "").lower() in ("1", "true", "yes"),
            private_ports=frozenset(int(p) for p in ports.split(",") if p.strip()) if ports else DEFAULT_PRIVATE_PORTS,
            cookie_max_age=int(env.get("PROXY_COOKIE_MAX_AGE", "3600")),
            cookie_samesite=env.get("PROXY_COOKIE_SAMESITE") or "lax",
            cache_ttl=float(env.get("PROXY_CACHE_TTL", "2")),
            activity_interval=float(env.get("PROXY_ACTIVITY_INTERVAL", "5")),
            api_upstream=env.get("PROXY_API_UPSTREAM", ""),
        )
