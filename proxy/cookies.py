"""What an app's Set-Cookie may do through the proxy: only set host-only cookies of its own.

Every preview of every sandbox shares the parent domain, so `Domain=<preview domain>`
from one app would plant cookies on all other sandboxes' previews (and on the proxy's
own host), and a cookie named like the proxy's auth cookie would shadow it. So the
`Domain` attribute is removed (the cookie stays on the host that set it) and cookies
with the proxy's names are dropped.
"""

from __future__ import annotations

from proxy.auth import COOKIE_NAMES

Headers = list[tuple[bytes, bytes]]

# Browsers compare the __Host-/__Secure- prefixes case-insensitively: so do we, for all.
_RESERVED = frozenset(name.lower().encode() for name in COOKIE_NAMES)


def sanitize_set_cookie(value: bytes) -> bytes | None:
    """The Set-Cookie value without any Domain attribute; None to drop it."""
    first, *attributes = value.split(b";")
    name = first.partition(b"=")[0].strip()
    if not name or name.lower() in _RESERVED:
        return None
    kept = [a for a in attributes if a.partition(b"=")[0].strip().lower() != b"domain"]
    return b";".join([first, *kept])


def filter_set_cookies(headers: Headers) -> Headers:
    out: Headers = []
    for key, value in headers:
        if key.lower() == b"set-cookie":
            cleaned = sanitize_set_cookie(value)
            if cleaned is None:
                continue
            value = cleaned
        out.append((key, value))
    return out
