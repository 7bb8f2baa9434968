"""Build contexts from the SDK's uploads (controlplane/snapshots/contexts.py): the SDK's own
hash and tar of real files are accepted and merged; content planted under another's hash,
and every way out of the context a hostile tar can try, are refused."""

from __future__ import annotations

import io
import os
import tarfile
import time
from pathlib import Path

import pytest

from controlplane.snapshots import contexthash, contexts
from controlplane.snapshots.contexts import ContextError, merge, unpack


def sdk_hash(path: Path, archive: str) -> str:
    from daytona._sync.object_storage import ObjectStorage

    return ObjectStorage._compute_hash_for_path_md5(object.__new__(ObjectStorage), str(path), archive)


def sdk_tar(path: Path, archive: str, dest: Path) -> Path:
    """The tar the SDK streams to the object storage (ObjectStorage._upload_as_tar)."""
    with tarfile.open(dest, mode="w") as tar:
        tar.add(str(path), arcname=archive)
    return dest


def project(root: Path) -> Path:
    """A directory with files at several levels, an empty directory and a symlink inside."""
    for name, text in {"app.py": "print('hi')\n", "b.txt": "bee", "a.txt": "a", "pkg/__init__.py": "",
                       "pkg/mod.py": "X = 1\n", "pkg/deep/data.json": "{}", "z/zz/zzz": "z"}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "empty" / "inner").mkdir(parents=True)
    os.symlink("app.py", root / "link.py")
    os.chmod(root / "app.py", 0o755)
    return root


def hostile(dest: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(dest, mode="w") as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return dest


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    return info


def test_the_sdks_uploads_of_a_file_and_a_directory_are_unpacked_and_merged(tmp_path: Path) -> None:
    src = project(tmp_path / "src")
    (tmp_path / "requirements.txt").write_text("tinypkg\n")
    file_hash = sdk_hash(tmp_path / "requirements.txt", "work/requirements.txt")
    dir_hash = sdk_hash(src, "work/src")
    root = tmp_path / "context"
    root.mkdir()
    assert unpack(sdk_tar(tmp_path / "requirements.txt", "work/requirements.txt", tmp_path / "1.tar"),
                  tmp_path / "u1", file_hash) == (1, 8, True)
    merge(tmp_path / "u1", root)
    assert unpack(sdk_tar(src, "work/src", tmp_path / "2.tar"), tmp_path / "u2", dir_hash) == (7, 25, True)
    merge(tmp_path / "u2", root)
    assert (root / "work/requirements.txt").read_text() == "tinypkg\n"
    assert (root / "work/src/pkg/deep/data.json").read_text() == "{}"
    assert os.readlink(root / "work/src/link.py") == "app.py"
    assert os.stat(root / "work/src/app.py").st_mode & 0o777 == 0o755
    assert not (root / "work/src/empty").exists()  # directory entries are not created, as upstream


def test_a_directory_listed_in_any_order_is_recognised(tmp_path: Path) -> None:
    """The SDK hashes in the client's listing order; the search finds orders other than sorted."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for name in ("c", "a", "b", "d/y", "d/x"):
        (src / name).write_text(name)
    tree = contexthash.Tree(".", [("c", src / "c"), ("b", src / "b"), ("a", src / "a")],
                            [contexthash.Tree("d", [("d/y", src / "d/y"), ("d/x", src / "d/x")])])
    import hashlib
    h = hashlib.md5(b"src")
    for rel in ("c", "a", "b", "d/x", "d/y"):  # neither sorted nor reversed
        h.update(rel.encode() + (src / rel).read_bytes())
    assert contexthash.matches(h.hexdigest(), "src", tree)
    assert not contexthash.matches("0" * 32, "src", tree)


def test_content_planted_under_another_hash_is_refused(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("print('the victim')\n")
    victim = sdk_hash(tmp_path / "app.py", "home/v/app.py")
    (tmp_path / "app.py").write_text("print('the attacker')\n")
    with pytest.raises(ContextError, match=f"does not match its hash {victim}"):
        unpack(sdk_tar(tmp_path / "app.py", "home/v/app.py", tmp_path / "t.tar"), tmp_path / "u", victim)


def test_too_many_orders_to_try_is_refused_not_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for index in range(9):
        (src / f"f{index}").write_text(str(index))
    monkeypatch.setattr(contexthash, "MAX_ORDERS", 100)
    with pytest.raises(ContextError, match="could not be checked"):
        unpack(sdk_tar(src, "src", tmp_path / "t.tar"), tmp_path / "u", "0" * 32)
    # Where only the organization itself can write its keys: used, said to be unchecked.
    assert unpack(tmp_path / "t.tar", tmp_path / "v", "0" * 32, isolated=True) == (9, 9, False)
    (src / "f0").write_text("changed")  # a mismatch found within the budget is refused even then
    sdk_tar(src, "src", tmp_path / "t2.tar")
    monkeypatch.setattr(contexthash, "MAX_ORDERS", 10**6)
    with pytest.raises(ContextError, match="does not match"):
        unpack(tmp_path / "t2.tar", tmp_path / "w", "0" * 32, isolated=True)


@pytest.mark.parametrize(("members", "why"), [
    ([(member("/etc/passwd"), b"x")], "outside the context"),
    ([(member("a", tarfile.DIRTYPE), b""), (member("a/../../escape"), b"x")], "outside the context"),
    ([(member("a", tarfile.DIRTYPE), b""), (member("b/other"), b"x")], "also has b/other"),
    ([(member("a", tarfile.DIRTYPE), b""), (member("a/l", tarfile.SYMTYPE, "/etc"), b"")], "leaves the context"),
    ([(member("a", tarfile.DIRTYPE), b""), (member("a/l", tarfile.SYMTYPE, "../.."), b"")], "leaves the context"),
    # A symlink to ".", then one through it: lexically inside, really outside.
    ([(member("a", tarfile.DIRTYPE), b""), (member("a/d", tarfile.SYMTYPE, "."), b""),
      (member("a/e", tarfile.SYMTYPE, "d/../.."), b"")], "leaves the context"),
    # A symlink to a directory inside, then a file written through it.
    ([(member("a", tarfile.DIRTYPE), b""), (member("a/s", tarfile.DIRTYPE), b""),
      (member("a/l", tarfile.SYMTYPE, "s"), b""), (member("a/l/f"), b"x")], "through a/l"),
    ([(member("a", tarfile.DIRTYPE), b""), (member("a/h", tarfile.LNKTYPE, "/etc/shadow"), b"")],
     "outside the context"),
    ([(member("a", tarfile.DIRTYPE), b""), (member("a/h", tarfile.LNKTYPE, "a/nothing"), b"")], "not to one of"),
    ([(member("a", tarfile.DIRTYPE), b""), (member("a/null", tarfile.CHRTYPE), b"")], "neither a file"),
    ([(member("a", tarfile.DIRTYPE), b""), (member("a/fifo", tarfile.FIFOTYPE), b"")], "neither a file"),
    ([(member("f"), b"x"), (member("f2"), b"y")], "also has f2"),
])
def test_hostile_tars_are_refused(tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes]], why: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    work = outside / "work"
    work.mkdir()
    with pytest.raises(ContextError, match=why):
        unpack(hostile(work / "t.tar", members), work / "u", "0" * 32)
    assert sorted(p.name for p in outside.iterdir()) == ["work"]  # nothing written beside


def test_sizes_are_bounded_and_garbage_is_not_a_tar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(contexts, "MAX_BYTES", 1000)
    with pytest.raises(ContextError, match="larger than"):
        unpack(hostile(tmp_path / "t.tar", [(member("big"), b"x" * 2000)]), tmp_path / "u", "0" * 32)
    (tmp_path / "g.tar").write_bytes(b"\x1f\x8b" + os.urandom(2000))
    with pytest.raises(ContextError, match="not a .*tar archive"):
        unpack(tmp_path / "g.tar", tmp_path / "g", "0" * 32)


def test_a_later_upload_wins_and_cannot_write_through_an_earlier_symlink(tmp_path: Path) -> None:
    root = tmp_path / "context"
    root.mkdir()
    first = tmp_path / "one"
    (first / "w").mkdir(parents=True)
    (first / "w" / "f").write_text("first")
    os.symlink("/etc", first / "w" / "etc")  # as unpack would never leave, but merge must not trust it
    merge(first, root)
    second = tmp_path / "two"
    (second / "w" / "etc").mkdir(parents=True)
    (second / "w" / "f").write_text("second")
    (second / "w" / "etc" / "passwd").write_text("pwned")
    with pytest.raises(ContextError, match="not a directory"):
        merge(second, root)
    assert "pwned" not in Path("/etc/passwd").read_text()


def test_a_20_mb_directory_is_checked_quickly(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for index in range(4):
        (src / ("sub" if index % 2 else "") / f"blob{index}").write_bytes(os.urandom(5 << 20))
    expected = sdk_hash(src, "data")
    tar = sdk_tar(src, "data", tmp_path / "t.tar")
    started = time.monotonic()
    assert unpack(tar, tmp_path / "u", expected) == (4, 20 << 20, True)
    print(f"\nunpacked and checked 20 MB in {time.monotonic() - started:.2f} s")
