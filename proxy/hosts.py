"""Strict parsing of preview hosts and toolbox paths (proxy-research.md §8).

Only `{port}-{id}.{configured domain}` is a preview host: exact suffix, case-insensitive,
optional `:port`, port 1-65535, one label of at most 63 characters. Toolbox paths carry the
id in a fixed position and may not contain dot segments, raw or percent-encoded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

# Sandbox ids: lowercase letters, digits and inner dashes, so they fit in a DNS label.
SANDBOX_ID = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_PORT = re.compile(r"[0-9]{1,5}")


@dataclass(frozen=True)
class PreviewHost:
    port: int
    label: str  # a sandbox id, or a signed preview token
    host: str  # the Host header as sent, lowercased (with its :port, if any)


def host_name(host: str) -> str:
    """The Host header without its port and trailing dot, lowercased."""
    host = host.strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name.rstrip(".")


def under_domain(host: str, domain: str) -> bool:
    return host_name(host).endswith("." + domain)


def parse_preview_host(host: str, domain: str) -> PreviewHost | None:
    name = host_name(host)
    suffix = "." + domain
    if not name.endswith(suffix):
        return None
    label = name[: -len(suffix)]
    if not label or "." in label or len(label) > 63:
        return None
    port_text, dash, ident = label.partition("-")
    if not dash or not _PORT.fullmatch(port_text) or not SANDBOX_ID.fullmatch(ident):
        return None
    port = int(port_text)
    if not 1 <= port <= 65535:
        return None
    return PreviewHost(port, ident, host.strip().lower())


class BadToolboxPath(ValueError):
    pass


def parse_toolbox_path(raw_path: bytes) -> tuple[str, bytes]:
    """`/toolbox/{id}/{rest}` -> (id, `/{rest}` byte for byte). Raises BadToolboxPath."""
    tail = raw_path[len(b"/toolbox/"):]
    ident_raw, slash, rest = tail.partition(b"/")
    try:
        ident = ident_raw.decode("ascii")
    except UnicodeDecodeError:
        ident = ""
    if not SANDBOX_ID.fullmatch(ident):
        raise BadToolboxPath("the sandbox id in /toolbox/{id}/ is not a valid sandbox id")
    if not slash:
        raise BadToolboxPath("a toolbox path needs an endpoint after the sandbox id: /toolbox/{id}/{endpoint}")
    rest = b"/" + rest
    if has_dot_segment(rest):
        raise BadToolboxPath("dot segments ('.' or '..', also percent-encoded) are not allowed in toolbox paths")
    return ident, rest


def has_dot_segment(raw_path: bytes) -> bool:
    # Decode once and split on both slashes, so `%2e%2e`, `..%2f` and `..\` are all caught.
    decoded = unquote_to_bytes(raw_path).replace(b"\\", b"/")
    return any(part in (b".", b"..") for part in decoded.split(b"/"))
