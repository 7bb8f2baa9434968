"""Credentials: API keys, preview tokens, signed preview labels and session cookies.

Everything is an HMAC with the proxy's secret (no database), compared in constant time.
- preview token: the registry's token for the sandbox, else HMAC(secret, id).
- signed preview label: base32 of (kind, expiry, MAC, id) in place of the id in the host;
  the MAC covers id, port, expiry and the sandbox's preview token, so it is bound to one
  port and dies when the token rotates. At most 56 characters, so `{port}-{token}` fits
  a 63-character DNS label.
- cookie: set after a query-token bootstrap; host-only, its MAC covers sandbox, port,
  expiry and the preview token, so it is useless on any other sandbox or port.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
import time
import uuid
from dataclasses import dataclass

from proxy.registry import Sandbox

COOKIE_HTTP = "sbx-preview-auth"
COOKIE_HTTPS = "__Host-sbx-preview-auth"
COOKIE_NAMES = frozenset({COOKIE_HTTP, COOKIE_HTTPS})
QUERY_PARAM = "DAYTONA_SANDBOX_AUTH_KEY"
PREVIEW_HEADER = b"x-daytona-preview-token"
SIGNED_MIN_SECONDS = 1
SIGNED_MAX_SECONDS = 24 * 3600

_KIND_UUID = 0
_KIND_TEXT = 1
_MAC_BYTES = 14
_MAX_TEXT_ID = 16  # 1 + 4 + 14 + 16 = 35 bytes = 56 base32 characters


class SignedLabelError(ValueError):
    """A signed preview label cannot be made for this sandbox (its id does not fit)."""


class SignedExpiryError(SignedLabelError):
    """The requested lifetime is outside SIGNED_MIN_SECONDS..SIGNED_MAX_SECONDS."""


@dataclass(frozen=True)
class SignedLabel:
    sandbox_id: str
    expires_at: int
    mac: bytes


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=").lower()


def _unb32(text: str) -> bytes:
    return base64.b32decode(text.upper() + "=" * (-len(text) % 8))


class Auth:
    def __init__(self, secret: bytes, api_keys: tuple[str, ...]) -> None:
        self._secret = secret
        # Compare digests so every comparison has the same length and takes the same time.
        self._api_key_digests = tuple(hashlib.sha256(k.encode()).digest() for k in api_keys if k)

    def _mac(self, *parts: bytes) -> bytes:
        return hmac.new(self._secret, b"\0".join(parts), hashlib.sha256).digest()

    # -- API keys ---------------------------------------------------------------------
    def is_api_key(self, presented: str) -> bool:
        digest = hashlib.sha256(presented.encode()).digest()
        found = False
        for known in self._api_key_digests:
            found |= hmac.compare_digest(digest, known)
        return found

    # -- preview tokens -----------------------------------------------------------------
    def preview_token(self, sandbox: Sandbox) -> str:
        if sandbox.token:
            return sandbox.token
        return _b32(self._mac(b"preview-token", sandbox.id.encode())[:20])

    def check_preview_token(self, sandbox: Sandbox, presented: str) -> bool:
        return hmac.compare_digest(self.preview_token(sandbox).encode(), presented.encode())

    # -- signed preview labels ----------------------------------------------------------
    def _signed_mac(self, sandbox: Sandbox, port: int, expires_at: int) -> bytes:
        token = self.preview_token(sandbox).encode()
        return self._mac(b"signed-preview", sandbox.id.encode(), str(port).encode(), str(expires_at).encode(), token)[:_MAC_BYTES]

    def mint_signed_label(self, sandbox: Sandbox, port: int, expires_at: int) -> str:
        try:
            id_bytes, kind = uuid.UUID(sandbox.id).bytes, _KIND_UUID
            if str(uuid.UUID(sandbox.id)) != sandbox.id:
                raise ValueError
        except ValueError:
            id_bytes, kind = sandbox.id.encode(), _KIND_TEXT
            if len(id_bytes) > _MAX_TEXT_ID:
                raise SignedLabelError(
                    f"sandbox id {sandbox.id!r} is too long for a signed preview URL: "
                    f"UUIDs and ids of up to {_MAX_TEXT_ID} characters fit in a DNS label") from None
        payload = struct.pack(">BI", kind, expires_at) + self._signed_mac(sandbox, port, expires_at) + id_bytes
        return _b32(payload)

    def sign_preview(self, sandbox: Sandbox, port: int, expires_in: int, now: float | None = None) -> str:
        """The signed label for `port` of `sandbox`, valid for `expires_in` seconds: what the
        proxy's minting route, its CLI and the control plane all hand out."""
        if not SIGNED_MIN_SECONDS <= expires_in <= SIGNED_MAX_SECONDS:
            raise SignedExpiryError(f"expiresInSeconds must be a whole number from {SIGNED_MIN_SECONDS} to "
                                    f"{SIGNED_MAX_SECONDS}, got {expires_in}")
        return self.mint_signed_label(sandbox, port, int(now if now is not None else time.time()) + expires_in)

    def signed_label_for(self, label: str, sandbox: Sandbox, port: int) -> SignedLabel | None:
        """`label` decoded, when it is a genuine signed label for `port` of `sandbox`
        (expired or revoked ones included: the caller decides what those mean)."""
        signed = self.decode_signed_label(label)
        if signed is None or signed.sandbox_id != sandbox.id or not self.verify_signed_label(signed, sandbox, port):
            return None
        return signed

    @staticmethod
    def decode_signed_label(label: str) -> SignedLabel | None:
        """The claimed contents of a label that has a signed token's shape, unverified."""
        if not 32 <= len(label) <= 56 or any(c not in "abcdefghijklmnopqrstuvwxyz234567" for c in label):
            return None
        try:
            payload = _unb32(label)
        except ValueError:
            return None
        if len(payload) < 5 + _MAC_BYTES + 1:
            return None
        kind, expires_at = struct.unpack(">BI", payload[:5])
        mac, id_bytes = payload[5:5 + _MAC_BYTES], payload[5 + _MAC_BYTES:]
        if kind == _KIND_UUID and len(id_bytes) == 16:
            sandbox_id = str(uuid.UUID(bytes=id_bytes))
        elif kind == _KIND_TEXT:
            try:
                sandbox_id = id_bytes.decode("ascii")
            except UnicodeDecodeError:
                return None
        else:
            return None
        if _b32(payload) != label:
            return None
        return SignedLabel(sandbox_id, expires_at, mac)

    def verify_signed_label(self, signed: SignedLabel, sandbox: Sandbox, port: int) -> bool:
        return hmac.compare_digest(self._signed_mac(sandbox, port, signed.expires_at), signed.mac)

    # -- cookies ------------------------------------------------------------------------
    def cookie_value(self, sandbox: Sandbox, port: int, expires_at: int) -> str:
        mac = self._mac(b"preview-cookie", sandbox.id.encode(), str(port).encode(), str(expires_at).encode(),
                        self.preview_token(sandbox).encode())
        return f"{expires_at}.{_b32(mac[:20])}"

    def check_cookie(self, value: str, sandbox: Sandbox, port: int, now: float | None = None) -> bool:
        expires_text, _, _ = value.partition(".")
        if not expires_text.isdigit():
            return False
        expires_at = int(expires_text)
        if expires_at < (now if now is not None else time.time()):
            return False
        return hmac.compare_digest(self.cookie_value(sandbox, port, expires_at).encode(), value.encode())


def split_cookies(header: bytes) -> tuple[dict[str, str], bytes | None]:
    """Our cookies, and the Cookie header without them (None when nothing is left)."""
    ours: dict[str, str] = {}
    kept: list[bytes] = []
    for part in header.split(b";"):
        name, eq, value = part.strip().partition(b"=")
        if not name:
            continue
        text_name = name.decode("latin-1")
        if text_name in COOKIE_NAMES:
            ours[text_name] = value.decode("latin-1")
        else:
            kept.append(part.strip())
    return ours, (b"; ".join(kept) if kept else None)


def strip_query_param(query: bytes, name: str) -> tuple[bytes, str | None]:
    """Remove `name` from a raw query string without re-encoding anything else."""
    from urllib.parse import unquote_plus

    found: str | None = None
    kept: list[bytes] = []
    target = name.encode()
    for part in query.split(b"&") if query else []:
        key, _, value = part.partition(b"=")
        if unquote_plus(key.decode("latin-1")).encode("latin-1") == target:
            found = unquote_plus(value.decode("latin-1"))
        else:
            kept.append(part)
    return b"&".join(kept), found
