"""Every public method of the official SDK's `FileSystem` against a real daemon.

Each test runs bare and through the SDK's own `/{sandboxId}` prefixing proxy.
Methods covered: create_folder, delete_file, download_file (bytes and to a local path),
download_file_stream, download_files, find_files, get_file_info, list_files, move_files,
replace_in_files, search_files, set_file_permissions, upload_file (bytes and local path),
upload_files, upload_file_stream.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import threading
from pathlib import Path

import pytest
from daytona.common.errors import (
    DaytonaBadRequestError,
    DaytonaConflictError,
    DaytonaError,
    DaytonaFileNotFoundError,
    DaytonaInvalidFilePathError,
)
from daytona._sync.filesystem import FileSystem
from daytona.common.filesystem import DownloadProgress, FileDownloadRequest, FileUpload, UploadProgress

from tests.helpers import RunningDaemon, sdk_filesystem

_counter = itertools.count()


@pytest.fixture(params=[False, True], ids=["bare", "prefixed"])
def fs(request: pytest.FixtureRequest, daemon: RunningDaemon) -> FileSystem:
    return sdk_filesystem(daemon, via_prefix=request.param)


@pytest.fixture
def base(daemon: RunningDaemon) -> str:
    """A fresh directory (relative to the work dir) for one test."""
    name = f"t{next(_counter)}"
    (daemon.workdir / name).mkdir()
    return name


def test_create_folder_info_and_list(fs: FileSystem, daemon: RunningDaemon, base: str) -> None:
    fs.create_folder(f"{base}/a/b", "700")
    fs.create_folder(f"{base}/a/b", "700")  # mkdir -p: existing directory is fine
    (daemon.workdir / base / "a" / "b" / "f.txt").write_bytes(b"12345")

    info = fs.get_file_info(f"{base}/a/b")
    assert info.is_dir and info.name == "b"
    assert info.permissions == "0700" and info.mode == "drwx------"
    assert info.owner == str(os.getuid()) and info.group == str(os.getgid())

    file_info = fs.get_file_info(str(daemon.workdir / base / "a/b/f.txt"))
    assert (file_info.size, file_info.is_dir, file_info.mode) == (5, False, "-rw-r--r--")
    assert file_info.modified_at is not None and file_info.modified_at.endswith("Z")
    assert file_info.mod_time.endswith("+0000 UTC")

    listing = fs.list_files(f"{base}/a")
    assert [(f.name, f.path, f.is_dir) for f in listing] == [("b", f"{base}/a/b", True)]
    deep = fs.list_files(base, depth=3)
    assert [f.path for f in deep] == [f"{base}/a", f"{base}/a/b", f"{base}/a/b/f.txt"]
    absolute = fs.list_files(str(daemon.workdir / base), depth=2)
    assert [f.path for f in absolute] == [str(daemon.workdir / base / "a"), str(daemon.workdir / base / "a/b")]
    assert base in [f.name for f in fs.list_files("")]  # empty path lists the work dir
    assert fs.list_files(f"{base}/a/b/..") and fs.list_files(f"{base}/a/b")[0].name == "f.txt"


def test_folder_and_listing_errors(fs: FileSystem, base: str) -> None:
    with pytest.raises(DaytonaFileNotFoundError):
        fs.list_files(f"{base}/missing")
    with pytest.raises(DaytonaFileNotFoundError):
        fs.get_file_info(f"{base}/missing")
    with pytest.raises(DaytonaBadRequestError, match="invalid mode"):
        fs.create_folder(f"{base}/x", "rwx")
    fs.upload_file(b"x", f"{base}/file")
    with pytest.raises(DaytonaBadRequestError, match="not a directory"):
        fs.list_files(f"{base}/file")
    with pytest.raises(DaytonaBadRequestError):
        fs.create_folder(f"{base}/file", "755")
    with pytest.raises(DaytonaError, match="depth"):
        fs.list_files(base, depth=0)


def test_upload_and_download_bytes_and_local_paths(fs: FileSystem, base: str, tmp_path: Path) -> None:
    fs.upload_file(b"hello", f"{base}/new/dir/hello.txt")  # parents are created
    assert fs.download_file(f"{base}/new/dir/hello.txt") == b"hello"
    fs.upload_file(b"", f"{base}/empty")
    assert fs.download_file(f"{base}/empty") == b""

    # Bigger than one 4 MiB read on the daemon side, from and to local files.
    payload = os.urandom(9 * 1024 * 1024 + 17)
    source = tmp_path / "big.bin"
    source.write_bytes(payload)
    fs.upload_file(str(source), f"{base}/big.bin")
    target = tmp_path / "out" / "big.bin"
    assert fs.download_file(f"{base}/big.bin", str(target)) is None
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(payload).digest()

    # Overwrite keeps the file's mode.
    fs.set_file_permissions(f"{base}/new/dir/hello.txt", mode="640")
    fs.upload_file(b"replaced", f"{base}/new/dir/hello.txt")
    assert fs.download_file(f"{base}/new/dir/hello.txt") == b"replaced"
    assert fs.get_file_info(f"{base}/new/dir/hello.txt").permissions == "0640"


def test_upload_files_and_download_files(fs: FileSystem, base: str, tmp_path: Path) -> None:
    local = tmp_path / "local.txt"
    local.write_bytes(b"from disk")
    odd = f"{base}/spaces and ü \"quotes\" back\\slash;x=1.txt"
    fs.upload_files(
        [
            FileUpload(b"one", f"{base}/1.txt"),
            FileUpload(str(local), f"{base}/sub/2.txt"),
            FileUpload(b"odd name", odd),
        ]
    )
    results = fs.download_files(
        [
            FileDownloadRequest(f"{base}/1.txt"),
            FileDownloadRequest(f"{base}/sub/2.txt", str(tmp_path / "dl" / "2.txt")),
            FileDownloadRequest(odd),
            FileDownloadRequest(f"{base}/missing"),
            FileDownloadRequest(f"{base}/sub"),
        ]
    )
    by_source = {r.source: r for r in results}
    assert by_source[f"{base}/1.txt"].result == b"one" and by_source[f"{base}/1.txt"].error is None
    assert by_source[f"{base}/sub/2.txt"].result == str(tmp_path / "dl" / "2.txt")
    assert (tmp_path / "dl" / "2.txt").read_bytes() == b"from disk"
    assert by_source[odd].result == b"odd name"
    missing = by_source[f"{base}/missing"]
    assert missing.result is None and missing.error_details is not None
    assert (missing.error_details.code, missing.error_details.status_code) == ("FILE_NOT_FOUND", 404)
    assert missing.error_details.source == "DAYTONA_DAEMON"
    directory = by_source[f"{base}/sub"]
    assert directory.error_details is not None and directory.error_details.code == "INVALID_FILE_PATH"


def test_download_errors_raise_typed_exceptions(fs: FileSystem, base: str) -> None:
    with pytest.raises(DaytonaFileNotFoundError):
        fs.download_file(f"{base}/missing")
    fs.create_folder(f"{base}/dir", "755")
    with pytest.raises(DaytonaInvalidFilePathError):
        fs.download_file(f"{base}/dir")
    with pytest.raises(DaytonaFileNotFoundError):
        list(fs.download_file_stream(f"{base}/missing"))


def test_upload_errors(fs: FileSystem, base: str) -> None:
    fs.create_folder(f"{base}/dir", "755")
    with pytest.raises(DaytonaError, match="400"):
        fs.upload_file(b"x", f"{base}/dir")  # a directory is in the way
    fs.upload_file(b"x", f"{base}/plain")
    with pytest.raises(DaytonaError, match="not a directory"):
        fs.upload_file(b"x", f"{base}/plain/child")  # a file is in the way of the parent


def test_streams_with_progress_and_cancel(fs: FileSystem, base: str, tmp_path: Path) -> None:
    payload = os.urandom(5 * 1024 * 1024 + 3)
    sent: list[UploadProgress] = []
    fs.upload_file_stream(io.BytesIO(payload), f"{base}/s.bin", on_progress=sent.append)
    assert sent[-1].bytes_sent == len(payload)
    fs.upload_file_stream(b"small bytes", f"{base}/b.bin")
    local = tmp_path / "src.bin"
    local.write_bytes(b"local source")
    fs.upload_file_stream(str(local), f"{base}/l.bin")

    seen: list[DownloadProgress] = []
    data = b"".join(fs.download_file_stream(f"{base}/s.bin", on_progress=seen.append))
    assert data == payload
    assert seen[-1].bytes_received == len(payload) and seen[-1].total_bytes == len(payload)
    assert b"".join(fs.download_file_stream(f"{base}/b.bin")) == b"small bytes"
    assert fs.download_file(f"{base}/l.bin") == b"local source"

    cancel = threading.Event()
    cancel.set()
    with pytest.raises(DaytonaError, match="cancelled"):
        fs.upload_file_stream(b"never", f"{base}/c.bin", cancel_event=cancel)
    with pytest.raises(DaytonaError, match="cancelled"):
        list(fs.download_file_stream(f"{base}/s.bin", cancel_event=cancel))
    with pytest.raises(DaytonaFileNotFoundError):
        fs.get_file_info(f"{base}/c.bin")


def test_delete(fs: FileSystem, base: str) -> None:
    fs.upload_files([FileUpload(b"1", f"{base}/d/1"), FileUpload(b"2", f"{base}/d/e/2"), FileUpload(b"3", f"{base}/f")])
    fs.delete_file(f"{base}/f")
    with pytest.raises(DaytonaFileNotFoundError):
        fs.get_file_info(f"{base}/f")
    with pytest.raises(DaytonaBadRequestError, match="recursive"):
        fs.delete_file(f"{base}/d")
    fs.delete_file(f"{base}/d", recursive=True)
    assert fs.list_files(base) == []
    with pytest.raises(DaytonaFileNotFoundError):
        fs.delete_file(f"{base}/d", recursive=True)


def test_move(fs: FileSystem, base: str) -> None:
    fs.upload_files([FileUpload(b"a", f"{base}/a.txt"), FileUpload(b"b", f"{base}/b.txt")])
    fs.create_folder(f"{base}/dir", "755")
    fs.move_files(f"{base}/a.txt", f"{base}/dir/moved.txt")
    assert fs.download_file(f"{base}/dir/moved.txt") == b"a"
    fs.move_files(f"{base}/dir", f"{base}/renamed")
    assert [f.name for f in fs.list_files(f"{base}/renamed")] == ["moved.txt"]
    with pytest.raises(DaytonaConflictError, match="already exists"):
        fs.move_files(f"{base}/b.txt", f"{base}/renamed/moved.txt")
    with pytest.raises(DaytonaFileNotFoundError):
        fs.move_files(f"{base}/missing", f"{base}/other")
    with pytest.raises(DaytonaFileNotFoundError):
        fs.move_files(f"{base}/b.txt", f"{base}/no/such/parent")


def test_set_file_permissions(fs: FileSystem, base: str) -> None:
    fs.upload_file(b"#!/bin/sh\n", f"{base}/run.sh")
    fs.set_file_permissions(f"{base}/run.sh", mode="755")
    assert fs.get_file_info(f"{base}/run.sh").permissions == "0755"
    fs.set_file_permissions(f"{base}/run.sh", owner="65534", group="65534")
    info = fs.get_file_info(f"{base}/run.sh")
    assert (info.owner, info.group) == ("65534", "65534")
    fs.set_file_permissions(f"{base}/run.sh", owner="root", group="root")
    info = fs.get_file_info(f"{base}/run.sh")
    assert (info.owner, info.group, info.permissions) == ("0", "0", "0755")
    with pytest.raises(DaytonaBadRequestError, match="invalid mode"):
        fs.set_file_permissions(f"{base}/run.sh", mode="999")
    with pytest.raises(DaytonaBadRequestError, match="user not found"):
        fs.set_file_permissions(f"{base}/run.sh", owner="no-such-user-xyz")
    with pytest.raises(DaytonaBadRequestError, match="group not found"):
        fs.set_file_permissions(f"{base}/run.sh", group="no-such-group-xyz")
    with pytest.raises(DaytonaFileNotFoundError):
        fs.set_file_permissions(f"{base}/missing", mode="644")


def test_find_files(fs: FileSystem, daemon: RunningDaemon, base: str) -> None:
    fs.upload_files(
        [
            FileUpload(b"alpha\nTODO: one\nbeta\r\nTODO: two\r\n", f"{base}/src/a.py"),
            FileUpload(b"nothing here\n", f"{base}/src/b.py"),
            FileUpload(b"TODO\x00binary", f"{base}/src/c.bin"),
            FileUpload(b"x" * 100_000 + b"TODO" + b"y" * 100_000 + b"\nTODO last", f"{base}/long.txt"),
        ]
    )
    matches = fs.find_files(base, "TODO")
    found = [(m.file, m.line, m.content[:20]) for m in matches]
    assert found == [
        (f"{base}/long.txt", 1, "x" * 20),
        (f"{base}/long.txt", 2, "TODO last"),
        (f"{base}/src/a.py", 2, "TODO: one"),
        (f"{base}/src/a.py", 4, "TODO: two"),
    ]
    assert fs.find_files(f"{base}/src/a.py", "beta")[0].content == "beta"
    assert fs.find_files(base, "no such text") == []
    with pytest.raises(DaytonaFileNotFoundError):
        fs.find_files(f"{base}/missing", "x")


def test_search_files(fs: FileSystem, base: str) -> None:
    fs.upload_files(
        [
            FileUpload(b"", f"{base}/a.py"),
            FileUpload(b"", f"{base}/pkg/b.py"),
            FileUpload(b"", f"{base}/pkg/c.txt"),
            FileUpload(b"", f"{base}/test_x.py"),
        ]
    )
    assert fs.search_files(base, "*.py").files == [f"{base}/a.py", f"{base}/pkg/b.py", f"{base}/test_x.py"]
    assert fs.search_files(base, "[bc].*").files == [f"{base}/pkg/b.py", f"{base}/pkg/c.txt"]
    assert fs.search_files(base, "[^a-b]*.py").files == [f"{base}/test_x.py"]
    assert fs.search_files(base, "pkg").files == [f"{base}/pkg"]
    assert fs.search_files(base, "nothing*").files == []
    with pytest.raises(DaytonaBadRequestError, match="glob"):
        fs.search_files(base, "[a-")


def test_replace_in_files(fs: FileSystem, base: str) -> None:
    fs.upload_files([FileUpload(b"foo bar foo\nfoofoo", f"{base}/a.txt"), FileUpload(b"none", f"{base}/b.txt")])
    fs.set_file_permissions(f"{base}/a.txt", mode="600")
    results = fs.replace_in_files([f"{base}/a.txt", f"{base}/b.txt", f"{base}/missing"], "foo", "qux")
    assert [(r.file, r.success) for r in results] == [
        (f"{base}/a.txt", True),
        (f"{base}/b.txt", True),
        (f"{base}/missing", False),
    ]
    assert "not found" in (results[2].error or "")
    assert fs.download_file(f"{base}/a.txt") == b"qux bar qux\nquxqux"
    assert fs.download_file(f"{base}/b.txt") == b"none"
    assert fs.get_file_info(f"{base}/a.txt").permissions == "0600"
    fs.replace_in_files([f"{base}/a.txt"], "qux", "")
    assert fs.download_file(f"{base}/a.txt") == b" bar \n"
