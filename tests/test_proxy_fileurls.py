"""`proxy/fileurls.py`: the verifier of Daytona's signed file URLs, against the SDK's own
signer (`daytona._utils.file_url_signing`), so the two cannot drift apart."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from daytona._utils.file_url_signing import compute_file_url_signature

from proxy.fileurls import FileUrlError, signature, verify

KEY = "k" * 43
NOW = 1_800_000_000


def query(path: str = "/home/daytona/a b.txt", expires: int = NOW + 60, sig: str | None = None,
          method: str = "GET") -> bytes:
    sig = sig or compute_file_url_signature(KEY, method, path, expires)
    return urlencode({"path": path, "expires": str(expires), "signature": sig}).encode()


def test_matches_the_sdks_signer_and_passes_only_the_path_on() -> None:
    assert signature(KEY, "GET", "/x", 5) == compute_file_url_signature(KEY, "GET", "/x", 5)
    signed = verify(KEY, "GET", b"/files/download", query(), now=NOW)
    assert signed.path == "/home/daytona/a b.txt" and signed.query == b"path=%2Fhome%2Fdaytona%2Fa+b.txt"
    assert verify(KEY, "POST", b"/files/upload-v2", query(method="POST"), now=NOW).path.endswith("a b.txt")
    assert verify(KEY, "GET", b"/files/download", query(expires=0), now=NOW).path  # 0: never expires


@pytest.mark.parametrize(("key", "method", "rest", "raw", "reason"), [
    (None, "GET", b"/files/download", query(), "no signing key"),
    ("other-key", "GET", b"/files/download", query(), "altered"),
    (KEY, "POST", b"/files/download", query(), "operation or method"),
    (KEY, "GET", b"/files/upload-v2", query(), "operation or method"),
    (KEY, "GET", b"/files", query(), "operation or method"),
    (KEY, "POST", b"/files/upload-v2", query(), "altered"),  # a GET signature used for an upload
    (KEY, "GET", b"/files/download", query(expires=NOW - 1), "expired"),
    (KEY, "GET", b"/files/download", query() + b"&path=/etc/passwd", "each once"),
    (KEY, "GET", b"/files/download", query() + b"&extra=1", "nothing else"),
    (KEY, "GET", b"/files/download", query().replace(b"signature=v1_", b"signature=v2_"), "altered"),
    (KEY, "GET", b"/files/download", b"path=%ff&expires=1&signature=x", "altered"),
    (KEY, "GET", b"/files/download", query(expires=NOW) .replace(str(NOW).encode(), b"1e9"), "unix time"),
    (KEY, "GET", b"/files/download", b"path=/x&expires=" + b"9" * 40 + b"&signature=x", "unix time"),
    (KEY, "GET", b"/files/download", "path=/é&expires=1&signature=x".encode(), "malformed"),
    (KEY, "GET", b"/files/download", b"path", "malformed"),
])
def test_refusals_say_why(key: str | None, method: str, rest: bytes, raw: bytes, reason: str) -> None:
    with pytest.raises(FileUrlError, match=reason):
        verify(key, method, rest, raw, now=NOW)
