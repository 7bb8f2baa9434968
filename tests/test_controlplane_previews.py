"""Signed preview URLs and signed file URLs through the official SDK against the real
main job: the proxy lets exactly the signed request through without other credentials,
and refuses it once expired, expired early, rotated, altered or aimed elsewhere."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest

from tests.controlplane_helpers import daytona, other_key_fixture, stack_fixture
from tests.runtime_helpers import Stack, needs_bwrap

pytestmark = needs_bwrap


stack = stack_fixture("cpprev", stores=["sqlite"])



@pytest.fixture(scope="module")
def sandbox(stack: Stack) -> Iterator[Any]:
    from daytona import SessionExecuteRequest

    created = daytona(stack).create()
    created.fs.upload_file(b"import http.server\nhttp.server.test(http.server.SimpleHTTPRequestHandler, "
                           b"port=3000, bind='127.0.0.1')\n", "/home/daytona/app.py")
    created.fs.upload_file(b"hello from the sandbox\n", "/home/daytona/index.html")
    created.process.create_session("app")
    created.process.execute_session_command("app", SessionExecuteRequest(command="cd /home/daytona && python3 app.py",
                                                                         run_async=True))
    link = created.get_preview_link(3000)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if via_proxy(stack, "GET", link.url, headers={"X-Daytona-Preview-Token": link.token}).status_code == 200:
            break
        time.sleep(0.1)
    yield created
    created.delete()


def via_proxy(stack: Stack, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """`url` as a client would open it, sent to the proxy's address with its Host."""
    parts = urlsplit(url)
    headers = {"Host": parts.netloc, **kwargs.pop("headers", {})}
    target = f"{stack.url}{parts.path or '/'}" + (f"?{parts.query}" if parts.query else "")
    return httpx.request(method, target, headers=headers, timeout=30, **kwargs)


def eventually(check: Callable[[], bool], timeout: float = 3.0) -> bool:
    """The proxy re-reads its registry at most every 0.25 s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


other_key = other_key_fixture()


# -- signed previews -------------------------------------------------------------------------

def test_a_signed_preview_url_opens_without_credentials_until_expired(stack: Stack, sandbox: Any) -> None:
    link = sandbox.get_preview_link(3000)
    assert via_proxy(stack, "GET", link.url).status_code in (401, 403)  # private: no credentials, no preview
    signed = sandbox.create_signed_preview_url(3000, expires_in_seconds=2)
    assert signed.port == 3000 and signed.sandbox_id == sandbox.id and signed.token in signed.url
    opened = via_proxy(stack, "GET", signed.url)
    assert opened.status_code == 200 and "hello from the sandbox" in opened.text, opened.text
    # Bound to its port: the same token on another port is refused.
    assert via_proxy(stack, "GET", signed.url.replace("3000-", "3001-", 1)).status_code == 403
    time.sleep(2.5)
    expired = via_proxy(stack, "GET", signed.url)
    assert expired.status_code == 403 and "expired" in expired.text


def test_expire_signed_preview_url_stops_it_at_once(stack: Stack, sandbox: Any) -> None:
    signed = sandbox.create_signed_preview_url(3000, expires_in_seconds=600)
    # (Labels are HMACs: the same port and expiry second give the same URL, so another expiry.)
    kept = sandbox.create_signed_preview_url(3000, expires_in_seconds=900)
    assert kept.token != signed.token
    first = via_proxy(stack, "GET", signed.url)
    assert first.status_code == 200, first.text
    sandbox.expire_signed_preview_url(3000, signed.token)
    assert eventually(lambda: via_proxy(stack, "GET", signed.url).status_code == 403)
    assert via_proxy(stack, "GET", kept.url).status_code == 200  # only that one


def test_signed_preview_bad_input_and_other_organizations(stack: Stack, sandbox: Any, other_key: str) -> None:
    from daytona import DaytonaNotFoundError, DaytonaValidationError

    with pytest.raises(DaytonaValidationError, match="expiresInSeconds"):
        sandbox.create_signed_preview_url(3000, expires_in_seconds=100_000)
    headers = {"Host": f"localhost:{stack.port}", "Authorization": f"Bearer {other_key}"}
    foreign = httpx.get(f"{stack.url}/api/sandbox/{sandbox.id}/ports/3000/signed-preview-url", headers=headers)
    assert foreign.status_code == 404
    with pytest.raises(DaytonaNotFoundError):
        daytona(stack, other_key).get(sandbox.id)
    with pytest.raises(DaytonaNotFoundError):
        sandbox.expire_signed_preview_url(3000, "not-a-token-of-this-sandbox")


# -- signed file URLs --------------------------------------------------------------------------

def test_signed_download_and_upload_urls_work_without_credentials(stack: Stack, sandbox: Any) -> None:
    sandbox.fs.upload_file(b"file body", "/home/daytona/signed.txt")
    url = sandbox.download_url("/home/daytona/signed.txt", ttl_seconds=60)
    assert "signature=v1_" in url
    downloaded = httpx.get(url, timeout=30)
    assert downloaded.status_code == 200 and downloaded.content == b"file body"
    upload = sandbox.upload_url("/home/daytona/uploaded.txt")
    sent = httpx.post(upload, files={"file": ("uploaded.txt", b"sent by a signed URL")}, timeout=30)
    assert sent.status_code == 200, sent.text
    assert sandbox.fs.download_file("/home/daytona/uploaded.txt") == b"sent by a signed URL"
    forever = sandbox.download_url("/home/daytona/signed.txt", ttl_seconds=0)  # expires=0: no expiry
    assert "expires=0" in forever and httpx.get(forever, timeout=30).status_code == 200


def _with(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(changes)
    return parts._replace(query=urlencode(query)).geturl()


def test_tampered_expired_misdirected_and_rotated_file_urls_fail(stack: Stack, sandbox: Any) -> None:
    sandbox.fs.upload_file(b"secret body", "/home/daytona/private.txt")
    url = sandbox.download_url("/home/daytona/private.txt", ttl_seconds=60)
    assert httpx.get(url, timeout=30).status_code == 200

    def refused(candidate: str, method: str = "GET", **kwargs: Any) -> str:
        response = httpx.request(method, candidate, timeout=30, **kwargs)
        assert response.status_code == 401, (candidate, response.status_code, response.text)
        return response.text

    assert "altered" in refused(_with(url, path="/etc/passwd"))
    assert "altered" in refused(_with(url, expires=str(int(time.time()) + 7200)))
    assert "altered" in refused(_with(url, signature="v1_" + "A" * 43))
    assert "each once" in refused(url + "&path=/etc/passwd")  # a second path the daemon might read
    assert "operation or method" in refused(url, "POST", files={"file": ("x", b"x")})
    assert "altered" in refused(url.replace("/files/download", "/files/upload-v2"), "POST",
                                            files={"file": ("x", b"x")})
    # Another sandbox's id in the same URL: its own key does not match (or it has none).
    other = daytona(stack).create()
    try:
        other.download_url("/home/daytona/x", ttl_seconds=60)  # give it a key
        refused(url.replace(f"/{sandbox.id}/", f"/{other.id}/"))
    finally:
        other.delete()
    short = sandbox.download_url("/home/daytona/private.txt", ttl_seconds=1)
    time.sleep(2.2)
    assert "expired" in refused(short)
    # Rotation invalidates every URL signed before it; new ones work.
    sandbox.rotate_signing_key()
    assert eventually(lambda: httpx.get(url, timeout=30).status_code == 401)
    fresh = sandbox.download_url("/home/daytona/private.txt", ttl_seconds=60)
    assert eventually(lambda: httpx.get(fresh, timeout=30).status_code == 200)
    # No signature and no credentials: still the toolbox's 401.
    assert httpx.get(url.split("?")[0] + "?path=/home/daytona/private.txt", timeout=30).status_code == 401


def test_signing_key_is_per_organization(stack: Stack, sandbox: Any, other_key: str) -> None:
    headers = {"Host": f"localhost:{stack.port}", "Authorization": f"Bearer {other_key}"}
    for method, path in (("GET", "signing-key"), ("POST", "signing-key/rotate")):
        response = httpx.request(method, f"{stack.url}/api/sandbox/{sandbox.id}/{path}", headers=headers)
        assert response.status_code == 404
