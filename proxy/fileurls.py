"""Daytona's signed file URLs (`sandbox.download_url(...)` / `upload_url(...)`), verified.

The SDK signs locally with the sandbox's signing key (which the control plane puts in the
registry entry as `files_key`):

    {toolbox}/{id}/files/download?path=P&expires=E&signature=v1_<b64url(HMAC-SHA256(key, "v1:files:GET:P:E"))>

(`/files/upload-v2` with POST for uploads; `expires=0` never expires). The proxy is the
auth boundary: such a request passes without other credentials when its operation and
method are exactly the signed pair, the signature matches in constant time, it has not
expired, and it carries each parameter once. The daemon then sees `path` only, re-encoded,
so what it acts on is what was signed. Rotating the key makes every older URL fail.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

PREFIX = "v1_"
# operation path -> the method it was signed for
OPERATIONS = {b"/files/download": "GET", b"/files/upload-v2": "POST"}


class FileUrlError(ValueError):
    """Why a signed file URL is refused (said to the client as is)."""


@dataclass(frozen=True)
class SignedFileRequest:
    path: str
    query: bytes  # what the daemon gets: path=... only


def signature(key: str, method: str, path: str, expires: int) -> str:
    digest = hmac.new(key.encode(), f"v1:files:{method}:{path}:{expires}".encode(), hashlib.sha256).digest()
    return PREFIX + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def is_signed_file_request(rest: bytes, query: bytes) -> bool:
    """Looks like one (so a failure is explained as a bad signed URL, not missing auth)."""
    return rest in OPERATIONS and b"signature=" in query


def verify(key: str | None, method: str, rest: bytes, query: bytes, now: float | None = None) -> SignedFileRequest:
    if key is None:
        raise FileUrlError("This sandbox has no signing key yet: get one with sandbox.download_url(...)")
    signed_method = OPERATIONS.get(rest)
    if signed_method is None or method != signed_method:
        raise FileUrlError("This signed URL is not valid for this operation or method.")
    try:
        pairs = parse_qsl(query.decode("ascii"), keep_blank_values=True, strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        raise FileUrlError("This signed URL's query is malformed.") from None
    params = dict(pairs)
    if len(params) != len(pairs) or set(params) != {"path", "expires", "signature"}:
        raise FileUrlError("A signed URL carries path, expires and signature, each once, and nothing else.")
    expires_text = params["expires"]
    if not expires_text.isdigit() or len(expires_text) > 12:
        raise FileUrlError("This signed URL's expiry is not a unix time.")
    expires = int(expires_text)
    expected = signature(key, signed_method, params["path"], expires)
    if not hmac.compare_digest(expected.encode(), params["signature"].encode()):
        raise FileUrlError("This signed URL is not valid: it was altered, or the signing key was rotated.")
    if expires != 0 and expires < (now if now is not None else time.time()):
        raise FileUrlError("This signed URL has expired: ask for a new one.")
    return SignedFileRequest(params["path"], urlencode({"path": params["path"]}).encode())
