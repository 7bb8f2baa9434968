"""Raw-HTTP behaviour of `/files` that the SDK does not exercise: Range/ETag downloads, the
bulk multipart formats byte by byte, upload-v2, bad input, disk full, interrupted uploads
and permission errors."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.helpers import RunningDaemon, sdk_filesystem, start_daemon
from tests.system import skip_unless


@pytest.fixture
def http(daemon: RunningDaemon) -> Iterator[httpx.Client]:
    with daemon.client(timeout=30) as client:
        yield client


def _error(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["code"] == code and body["source"] == "DAYTONA_DAEMON" and body["statusCode"] == status
    return body


def _leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(".") and p.name.endswith(".upload")]


# -- single download -------------------------------------------------------------------------


def test_download_headers_range_and_etag(daemon: RunningDaemon, http: httpx.Client) -> None:
    data = bytes(range(256)) * 40  # 10240 bytes
    (daemon.workdir / "dl.bin").write_bytes(data)
    full = http.get("/files/download", params={"path": "dl.bin"})
    assert full.status_code == 200 and full.content == data
    assert full.headers["content-length"] == str(len(data))
    assert full.headers["content-type"] == "application/octet-stream"
    assert full.headers["content-disposition"] == "attachment; filename=\"dl.bin\"; filename*=utf-8''dl.bin"
    assert full.headers["accept-ranges"] == "bytes"
    etag = full.headers["etag"]

    part = http.get("/files/download", params={"path": "dl.bin"}, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == data[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(data)}"
    assert part.headers["content-length"] == "100"
    tail = http.get("/files/download", params={"path": "dl.bin"}, headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == data[-10:]
    rest = http.get("/files/download", params={"path": "dl.bin"}, headers={"Range": "bytes=10000-"})
    assert rest.status_code == 206 and rest.content == data[10000:]
    clamped = http.get("/files/download", params={"path": "dl.bin"}, headers={"Range": "bytes=10200-99999"})
    assert clamped.content == data[10200:]
    for ignored in ("bytes=5-1", "items=0-1", "bytes=0-1,5-6"):
        whole = http.get("/files/download", params={"path": "dl.bin"}, headers={"Range": ignored})
        assert whole.status_code == 200 and whole.content == data

    unsatisfiable = http.get("/files/download", params={"path": "dl.bin"}, headers={"Range": "bytes=20000-"})
    _error(unsatisfiable, 416, "BAD_REQUEST")
    assert unsatisfiable.headers["content-range"] == f"bytes */{len(data)}"

    cached = http.get("/files/download", params={"path": "dl.bin"}, headers={"If-None-Match": etag})
    assert cached.status_code == 304 and cached.content == b"" and cached.headers["etag"] == etag
    listed = http.get("/files/download", params={"path": "dl.bin"}, headers={"If-None-Match": f'"x", W/{etag}'})
    assert listed.status_code == 304
    since = http.get(
        "/files/download", params={"path": "dl.bin"}, headers={"If-Modified-Since": full.headers["last-modified"]}
    )
    assert since.status_code == 304

    (daemon.workdir / "dl.bin").write_bytes(data[::-1])
    changed = http.get("/files/download", params={"path": "dl.bin"}, headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.content == data[::-1] and changed.headers["etag"] != etag
    stale_range = http.get(
        "/files/download", params={"path": "dl.bin"}, headers={"Range": "bytes=0-9", "If-Range": etag}
    )
    assert stale_range.status_code == 200 and len(stale_range.content) == len(data)

    head = http.head("/files/download", params={"path": "dl.bin"})
    assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == str(len(data))


def test_download_unicode_name_prefixed_and_errors(daemon: RunningDaemon, http: httpx.Client) -> None:
    (daemon.workdir / "über \"x\".txt").write_bytes(b"u")
    response = http.get(f"/{daemon.sandbox_id}/files/download", params={"path": "über \"x\".txt"})
    assert response.content == b"u"
    disposition = response.headers["content-disposition"]
    assert "filename*=utf-8''%C3%BCber%20%22x%22.txt" in disposition
    assert 'filename="\u00fcber \\"x\\".txt"' in response.headers.get_list("content-disposition")[0].encode(
        "latin-1"
    ).decode("latin-1")
    _error(http.get("/files/download", params={"path": "nope"}), 404, "FILE_NOT_FOUND")
    (daemon.workdir / "adir").mkdir(exist_ok=True)
    assert "path must be a file" in str(_error(http.get("/files/download", params={"path": "adir"}), 400, "BAD_REQUEST")["message"])
    _error(http.get("/files/download"), 400, "BAD_REQUEST")


# -- bulk download ---------------------------------------------------------------------------


def test_bulk_download_wire_format(daemon: RunningDaemon, http: httpx.Client) -> None:
    (daemon.workdir / "bd").mkdir(exist_ok=True)
    (daemon.workdir / "bd" / "a.json").write_bytes(b'{"a": 1}')
    weird = "bd/we\\ird \"näme\".txt"
    (daemon.workdir / weird).write_bytes(b"W")
    response = http.post("/files/bulk-download", json={"paths": ["bd/a.json", "bd/missing", weird]})
    assert response.status_code == 200
    media_type, _, boundary = response.headers["content-type"].partition("; boundary=")
    assert media_type == "multipart/form-data" and boundary
    body = response.content
    assert body.startswith(f"--{boundary}\r\n".encode()) and body.endswith(f"\r\n--{boundary}--\r\n".encode())
    parts = body[len(boundary) + 4 : -(len(boundary) + 8)].split(f"\r\n--{boundary}\r\n".encode())
    assert len(parts) == 3
    heads = []
    for part in parts:
        head, _, content = part.partition(b"\r\n\r\n")
        heads.append((dict(line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")), content))

    (first, content) = heads[0]
    assert content == b'{"a": 1}' and first["Content-Length"] == "8"
    assert first["Content-Type"] == "application/json"
    assert first["Content-Disposition"] == "form-data; name=\"file\"; filename=\"bd/a.json\"; filename*=utf-8''bd%2Fa.json"

    (error_head, error_content) = heads[1]
    assert error_head["Content-Type"] == "application/json; charset=utf-8"
    assert error_head["Content-Disposition"].startswith('form-data; name="error"; filename="bd/missing"')
    error = json.loads(error_content)
    assert error["path"] == "bd/missing" and error["code"] == "FILE_NOT_FOUND" and error["statusCode"] == 404
    assert error["source"] == "DAYTONA_DAEMON" and {"message", "timestamp"} <= set(error)

    (weird_head, weird_content) = heads[2]
    assert weird_content == b"W"
    assert f"filename*=utf-8''{quote(weird, safe='')}" in weird_head["Content-Disposition"].replace("%2F", "%2F")
    assert 'filename="bd/we\\\\ird \\"n\u00e4me\\".txt"' in weird_head["Content-Disposition"]


def test_bulk_download_bad_requests(http: httpx.Client) -> None:
    _error(http.post("/files/bulk-download", json={"paths": []}), 400, "BAD_REQUEST")
    _error(http.post("/files/bulk-download", content=b"not json"), 400, "INVALID_REQUEST_BODY")
    _error(http.post("/files/bulk-download", json={"paths": "a"}), 400, "INVALID_REQUEST_BODY")
    _error(http.post("/files/bulk-download", json={}), 400, "INVALID_REQUEST_BODY")


# -- uploads ---------------------------------------------------------------------------------


def test_bulk_upload_replies(daemon: RunningDaemon, http: httpx.Client) -> None:
    ok = http.post(
        "/files/bulk-upload",
        data={"files[0].path": "bu/one.txt", "files[1].path": " bu/two.txt \n"},
        files={"files[0].file": ("x", b"1"), "files[1].file": ("y", b"22")},
    )
    assert ok.status_code == 200 and ok.json() == {
        "files": [{"path": "bu/one.txt", "bytes": 1}, {"path": "bu/two.txt", "bytes": 2}]
    }
    assert (daemon.workdir / "bu" / "two.txt").read_bytes() == b"22"

    partial = http.post(
        "/files/bulk-upload",
        data={"files[0].path": "bu/three.txt"},
        files={"files[0].file": ("x", b"3"), "files[1].file": ("y", b"orphan")},
    )
    assert partial.status_code == 400
    reply = partial.json()
    assert reply["errors"] == ["file[1]: missing .path metadata (send files[1].path before the file)"]
    assert reply["files"] == [{"path": "bu/three.txt", "bytes": 1}]
    # Also a full ErrorResponse, so generic clients see the usual envelope.
    assert reply["statusCode"] == 400 and reply["code"] == "BAD_REQUEST" and reply["source"] == "DAYTONA_DAEMON"
    not_multipart = http.post("/files/bulk-upload", content=b"{}", headers={"Content-Type": "application/json"})
    no_boundary = http.post("/files/bulk-upload", content=b"--x", headers={"Content-Type": "multipart/form-data"})
    assert no_boundary.status_code == 400 and "boundary" in no_boundary.json()["errors"][0]
    assert not_multipart.status_code == 400 and "invalid multipart form" in not_multipart.json()["errors"][0]
    garbage = http.post(
        "/files/bulk-upload", content=b"garbage", headers={"Content-Type": "multipart/form-data; boundary=XYZ"}
    )
    assert garbage.status_code == 400 and garbage.json()["errors"]
    assert _leftovers(daemon.workdir / "bu") == []


def test_truncated_multipart_leaves_old_file(daemon: RunningDaemon, http: httpx.Client) -> None:
    target = daemon.workdir / "trunc.txt"
    target.write_bytes(b"old")
    body = (
        b"--B\r\nContent-Disposition: form-data; name=\"files[0].path\"\r\n\r\ntrunc.txt\r\n"
        b"--B\r\nContent-Disposition: form-data; name=\"files[0].file\"; filename=\"trunc.txt\"\r\n\r\n"
        b"new data without a closing boundary"
    )
    response = http.post("/files/bulk-upload", content=body, headers={"Content-Type": "multipart/form-data; boundary=B"})
    assert response.status_code == 400
    assert "closing boundary" in response.json()["errors"][0]
    assert target.read_bytes() == b"old" and _leftovers(daemon.workdir) == []


def test_upload_v2_raw_and_multipart(daemon: RunningDaemon, http: httpx.Client) -> None:
    raw = http.post("/files/upload-v2", params={"path": "v2/raw.bin"}, content=b"raw body",
                    headers={"Content-Type": "application/octet-stream"})
    assert raw.status_code == 200 and raw.json() == {"name": "raw.bin", "path": "v2/raw.bin", "type": "file"}
    assert (daemon.workdir / "v2" / "raw.bin").read_bytes() == b"raw body"
    form = http.post("/files/upload-v2", params={"path": "v2/form.bin"}, files={"file": ("ignored", b"form body")})
    assert form.json()["name"] == "form.bin"
    assert (daemon.workdir / "v2" / "form.bin").read_bytes() == b"form body"
    legacy = http.post("/files/upload", params={"path": "v2/legacy.bin"}, files={"file": ("f", b"legacy")})
    assert legacy.status_code == 200 and legacy.content == b""
    assert (daemon.workdir / "v2" / "legacy.bin").read_bytes() == b"legacy"
    _error(http.post("/files/upload-v2", content=b"x"), 400, "BAD_REQUEST")
    no_file = http.post("/files/upload-v2", params={"path": "v2/none"}, files={"other": ("f", b"x")})
    assert "no part named 'file'" in str(_error(no_file, 400, "BAD_REQUEST")["message"])
    _error(http.post("/files/upload-v2", params={"path": "v2"}, content=b"x"), 400, "BAD_REQUEST")
    no_boundary = http.post("/files/upload-v2", params={"path": "v2/nb"}, content=b"--x\r\n",
                            headers={"Content-Type": "multipart/form-data"})
    assert "boundary" in str(_error(no_boundary, 400, "BAD_REQUEST")["message"])
    assert not (daemon.workdir / "v2" / "nb").exists()


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url", "params", "body"),
    [
        ("GET", "/files", {"depth": "abc"}, None),
        ("GET", "/files", {"depth": "0"}, None),
        ("GET", "/files/info", {}, None),
        ("GET", "/files/info", {"path": "a\x00b"}, None),
        ("POST", "/files/folder", {}, None),
        ("POST", "/files/folder", {"path": "x", "mode": "99999"}, None),
        ("DELETE", "/files", {"path": "x", "recursive": "maybe"}, None),
        ("DELETE", "/files", {}, None),
        ("POST", "/files/move", {"source": "a"}, None),
        ("POST", "/files/permissions", {"path": "."}, None) ,
        ("POST", "/files/permissions", {"path": ".", "owner": "99999999999999"}, None),
        ("GET", "/files/find", {"path": "."}, None),
        ("GET", "/files/search", {"path": ".", "pattern": "a\\"}, None),
        ("GET", "/files/search", {"pattern": "*"}, None),
        ("POST", "/files/replace", {}, b"{}"),
        ("POST", "/files/replace", {}, b'{"files": ["a"], "pattern": "", "newValue": "x"}'),
        ("POST", "/files/replace", {}, b'{"files": "a", "pattern": "p", "newValue": "x"}'),
    ],
)
def test_bad_input_is_a_400(http: httpx.Client, method: str, url: str, params: dict[str, str], body: bytes | None) -> None:
    response = http.request(method, url, params=params, content=body)
    if url == "/files/permissions" and len(params) == 1:
        assert response.status_code == 200  # nothing to change is fine
        return
    assert response.status_code == 400, response.text
    payload = response.json()
    assert payload["source"] == "DAYTONA_DAEMON" and payload["code"] in ("BAD_REQUEST", "INVALID_REQUEST_BODY")
    assert payload["message"]


def test_trailing_slash_routes(daemon: RunningDaemon, http: httpx.Client) -> None:
    (daemon.workdir / "slash").mkdir(exist_ok=True)
    (daemon.workdir / "slash" / "f").write_bytes(b"")
    listed = http.get("/files/", params={"path": "slash"})
    assert listed.status_code == 200 and [e["name"] for e in listed.json()] == ["f"]
    assert http.delete("/files/", params={"path": "slash", "recursive": "true"}).status_code == 204
    assert not (daemon.workdir / "slash").exists()
    replaced = http.post("/files/replace", json={"files": ["bad\x00path"], "pattern": "a", "newValue": "b"})
    assert replaced.status_code == 200 and replaced.json()[0]["success"] is False


# -- disk full, interrupted uploads, permissions ---------------------------------------------


@pytest.fixture
def tiny_disk(daemon: RunningDaemon) -> Iterator[Path]:
    mount_point = daemon.workdir / "tiny"
    mount_point.mkdir(exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if result.returncode != 0:
        mount_point.rmdir()
        pytest.skip(f"cannot mount a 1 MiB tmpfs to simulate a full disk: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
        shutil.rmtree(mount_point, ignore_errors=True)


def test_disk_full_is_507_and_keeps_old_file(daemon: RunningDaemon, http: httpx.Client, tiny_disk: Path) -> None:
    (tiny_disk / "keep.txt").write_bytes(b"old content")
    big = os.urandom(2 * 1024 * 1024)
    bulk = http.post(
        "/files/bulk-upload", data={"files[0].path": "tiny/keep.txt"}, files={"files[0].file": ("keep.txt", big)}
    )
    assert bulk.status_code == 507
    assert "no space left on device" in bulk.json()["errors"][0] and bulk.json()["files"] == []
    raw = http.post("/files/upload-v2", params={"path": "tiny/keep.txt"}, content=big)
    _error(raw, 507, "INSUFFICIENT_STORAGE")
    assert (tiny_disk / "keep.txt").read_bytes() == b"old content"
    assert _leftovers(tiny_disk) == []
    from daytona.common.errors import DaytonaError

    with pytest.raises(DaytonaError, match="507"):
        sdk_filesystem(daemon).upload_file(big, "tiny/keep.txt")


def _send_half_and_close(daemon: RunningDaemon, head: bytes, body: bytes, directory: Path) -> None:
    host, port = daemon.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head + body[: len(body) // 2])
        # The daemon is writing a temp file beside the target while the body arrives.
        assert _wait_for(lambda: _leftovers(directory) != []), "no temp file while uploading"


def _wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_interrupted_uploads_leave_old_file_and_no_temp(daemon: RunningDaemon, http: httpx.Client) -> None:
    directory = daemon.workdir / "interrupted"
    directory.mkdir(exist_ok=True)
    target = directory / "file.bin"
    target.write_bytes(b"old")
    payload = os.urandom(4 * 1024 * 1024)
    body = (
        b"--BND\r\nContent-Disposition: form-data; name=\"files[0].path\"\r\n\r\ninterrupted/file.bin\r\n"
        b"--BND\r\nContent-Disposition: form-data; name=\"files[0].file\"; filename=\"f\"\r\n\r\n"
        + payload
        + b"\r\n--BND--\r\n"
    )
    head = (
        f"POST /files/bulk-upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=BND\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    _send_half_and_close(daemon, head, body, directory)
    assert _wait_for(lambda: _leftovers(directory) == []), _leftovers(directory)
    assert target.read_bytes() == b"old"

    raw_head = (
        f"POST /files/upload-v2?path=interrupted/file.bin HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode()
    _send_half_and_close(daemon, raw_head, payload, directory)
    assert _wait_for(lambda: _leftovers(directory) == []), _leftovers(directory)
    assert target.read_bytes() == b"old"
    # The daemon is still healthy.
    assert http.get("/files/info", params={"path": "interrupted/file.bin"}).json()["size"] == 3


@pytest.fixture(scope="module")
def unprivileged_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    """A daemon that is root but without CAP_DAC_OVERRIDE, so file permissions apply to it."""
    skip_unless("setpriv")  # to drop CAP_DAC_OVERRIDE
    setpriv = shutil.which("setpriv")
    assert setpriv is not None
    running = start_daemon(
        tmp_path_factory.mktemp("unprivileged"),
        command_prefix=[setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"],
    )
    yield running
    running.stop()


def test_permission_denied_is_403(unprivileged_daemon: RunningDaemon) -> None:
    from daytona.common.errors import DaytonaError, DaytonaFileAccessDeniedError

    workdir = unprivileged_daemon.workdir
    locked = workdir / "locked"
    locked.mkdir(exist_ok=True)
    (locked / "secret.txt").write_bytes(b"secret")
    secret = workdir / "secret.txt"
    secret.write_bytes(b"secret")
    for path, mode in ((secret, 0o000), (locked, 0o500)):
        os.chown(path, 65534, 65534)
        os.chmod(path, mode)
    fs = sdk_filesystem(unprivileged_daemon)
    try:
        if b"secret" == _try_read_as_daemon(unprivileged_daemon, secret):
            pytest.skip("capabilities were not dropped: root still reads mode-000 files")
        with pytest.raises(DaytonaFileAccessDeniedError):
            fs.download_file("secret.txt")
        with unprivileged_daemon.client() as http:
            _error(http.get("/files/download", params={"path": "secret.txt"}), 403, "FILE_ACCESS_DENIED")
            _error(http.delete("/files", params={"path": "locked/secret.txt"}), 403, "FILE_ACCESS_DENIED")
            _error(http.post("/files/folder", params={"path": "locked/new"}), 403, "FILE_ACCESS_DENIED")
            _error(http.post("/files/upload-v2", params={"path": "locked/new"}, content=b"x"), 403, "FILE_ACCESS_DENIED")
        with pytest.raises(DaytonaError, match="permission denied"):
            fs.upload_file(b"x", "locked/secret.txt")
        assert (locked / "secret.txt").read_bytes() == b"secret"
        assert fs.find_files(".", "secret") == []  # unreadable files are skipped
    finally:
        os.chmod(locked, 0o755)
        os.chmod(secret, 0o644)


def _try_read_as_daemon(daemon: RunningDaemon, path: Path) -> bytes | None:
    with daemon.client() as http:
        response = http.get("/files/download", params={"path": str(path)})
    return response.content if response.status_code == 200 else None


def test_odd_paths_in_bulk_download_become_error_parts(http: httpx.Client) -> None:
    body = json.dumps({"paths": ["nul\x00byte", "fine-but-missing"]})
    response = http.post("/files/bulk-download", content=body.encode(), headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    assert response.content.count(b'"code": "INVALID_FILE_PATH"') == 1
    assert response.content.count(b'"code": "FILE_NOT_FOUND"') == 1
    assert response.content.endswith(b"--\r\n")


def test_lone_surrogates_are_refused_as_invalid_json(http: httpx.Client) -> None:
    # Not valid Unicode, so no path can carry it: the whole request is refused up front.
    body = json.dumps({"paths": ["lone \ud800 surrogate"]})
    response = http.post("/files/bulk-download", content=body.encode(), headers={"Content-Type": "application/json"})
    assert "surrogate" in str(_error(response, 400, "INVALID_REQUEST_BODY")["message"])


def test_uploads_and_replace_write_through_symlinks(daemon: RunningDaemon, http: httpx.Client) -> None:
    real = daemon.workdir / "real.txt"
    link = daemon.workdir / "link.txt"
    real.write_bytes(b"before")
    link.unlink(missing_ok=True)
    link.symlink_to(real)
    fs = sdk_filesystem(daemon)
    fs.upload_file(b"after", "link.txt")
    assert link.is_symlink() and real.read_bytes() == b"after"
    fs.replace_in_files(["link.txt"], "after", "replaced")
    assert link.is_symlink() and real.read_bytes() == b"replaced"


def test_refuses_to_delete_root(http: httpx.Client) -> None:
    response = http.delete("/files", params={"path": "/", "recursive": "true"})
    assert "refusing" in str(_error(response, 400, "BAD_REQUEST")["message"])


def _bytes_read_by(daemon: RunningDaemon) -> int:
    for line in Path(f"/proc/{daemon.process.pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/<pid>/io")


@pytest.mark.parametrize("bulk", [False, True], ids=["download", "bulk-download"])
def test_download_stops_reading_when_client_leaves(daemon: RunningDaemon, bulk: bool) -> None:
    sparse = daemon.workdir / "sparse-400m.bin"
    with open(sparse, "wb") as handle:
        handle.truncate(400 * 1024 * 1024)  # reads fast, costs no disk
    before = _bytes_read_by(daemon)
    with daemon.client(timeout=30) as client:
        if bulk:
            request = client.build_request("POST", "/files/bulk-download", json={"paths": [sparse.name]})
        else:
            request = client.build_request("GET", "/files/download", params={"path": sparse.name})
        response = client.send(request, stream=True)
        assert response.status_code == 200
        next(response.iter_raw(1024 * 1024))
        response.close()
    time.sleep(1.0)
    read = _bytes_read_by(daemon) - before
    assert read < 64 * 1024 * 1024, f"daemon read {read >> 20} MiB after the client left"


def test_fifo_is_refused_not_hung(daemon: RunningDaemon, http: httpx.Client) -> None:
    fifo = daemon.workdir / "a.fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    _error(http.get("/files/download", params={"path": "a.fifo"}), 400, "BAD_REQUEST")
    bulk = http.post("/files/bulk-download", json={"paths": ["a.fifo"]})
    assert b'"code": "INVALID_FILE_PATH"' in bulk.content


def test_huge_listing_is_refused_quickly(http: httpx.Client) -> None:
    # A whole-filesystem listing at unbounded depth must end with an actionable 400, not hang.
    response = http.get("/files", params={"path": "/", "depth": "1000"}, timeout=120)
    if response.status_code == 200:
        assert len(response.json()) < 100_000  # a tiny root file system: nothing to refuse
    else:
        assert "smaller depth" in str(_error(response, 400, "BAD_REQUEST")["message"])


@pytest.mark.parametrize("field", ["owner", "group"])
def test_permissions_with_unicode_digits_are_a_clear_400(http: httpx.Client, daemon: RunningDaemon, field: str) -> None:
    # "²".isdigit() is True but int("²") fails: found by the OpenAPI fuzzer as a 500.
    (daemon.workdir / "perm-digits.txt").write_bytes(b"x")
    response = http.post("/files/permissions", params={"path": "perm-digits.txt", field: "²"})
    assert "not found" in str(_error(response, 400, "BAD_REQUEST")["message"])


def test_a_move_across_file_systems_copies_data_only(daemon: RunningDaemon, http: httpx.Client,
                                                      tmp_path: Path) -> None:
    """A move across file systems copies; what it refuses, it refuses before copying a byte:
    a tree of /proc (its pagemap reads as tens of gigabytes: the fuzzer once filled a disk
    with it), a FIFO (a copy would wait forever), a tree with a device inside. Data moves."""
    import tempfile

    sid = daemon.sandbox_id
    shm = Path(tempfile.mkdtemp(dir="/dev/shm"))  # tmpfs: another file system than the work dir's
    try:
        response = http.post(f"/{sid}/files/move", params={"source": "/proc/self/task",
                                                            "destination": str(daemon.workdir / "proc-copy")})
        assert response.status_code == 400 and "kernel's proc file system" in response.json()["message"]
        assert not (daemon.workdir / "proc-copy").exists()
        os.mkfifo(shm / "fifo")
        response = http.post(f"/{sid}/files/move", params={"source": str(shm / "fifo"),
                                                            "destination": str(daemon.workdir / "fifo")})
        assert response.status_code == 400 and "device, FIFO or socket" in response.json()["message"]
        assert (shm / "fifo").exists() and not os.path.lexists(daemon.workdir / "fifo")
        (shm / "tree" / "sub").mkdir(parents=True)
        (shm / "tree" / "sub" / "data.txt").write_text("data")
        os.mkfifo(shm / "tree" / "sub" / "pipe")
        response = http.post(f"/{sid}/files/move", params={"source": str(shm / "tree"),
                                                            "destination": str(daemon.workdir / "tree")})
        assert response.status_code == 400 and "sub/pipe" in response.json()["message"]
        assert (shm / "tree" / "sub" / "data.txt").exists() and not (daemon.workdir / "tree").exists()
        os.unlink(shm / "tree" / "sub" / "pipe")
        response = http.post(f"/{sid}/files/move", params={"source": str(shm / "tree"),
                                                            "destination": str(daemon.workdir / "tree")})
        assert response.status_code == 200, response.text
        assert (daemon.workdir / "tree" / "sub" / "data.txt").read_text() == "data" and not (shm / "tree").exists()
    finally:
        shutil.rmtree(shm, ignore_errors=True)
