"""Images with local files through the official SDK against the real main job: the SDK
uploads them to the local s3proxy over HTTPS (its CA installed in the system store, as the
banner says), the build reads them back, checks them against their hashes and COPYs them.
Organizations cannot write each other's uploads on the local server (a key and bucket
each); with an external S3's shared keys, an object another organization planted under
this one's key fails the build."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from controlplane.objectstorage import local
from tests.controlplane_helpers import daytona, extra_key, stack_fixture
from tests.image_helpers import tiny_wheel
from tests.runtime_helpers import Stack

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="image builds and the system CA store need root"),
    pytest.mark.skipif(local.missing() is not None, reason=f"the local object storage needs {local.missing()}"),
]

stack = stack_fixture("contexts", pool_size=0, stores=["sqlite"])


@pytest.fixture(scope="module")
def trusted(stack: Stack) -> Iterator[Path]:
    """The stack's CA in the system store for the test's duration: the one command the
    banner prints, undone after."""
    ca = stack.state_dir / "object-storage" / "tls" / "ca.pem"
    assert "update-ca-certificates" in " ".join(stack.banner_lines), stack.banner_lines
    installed = Path(f"/usr/local/share/ca-certificates/sandbox-toolbox-test-{secrets.token_hex(4)}.crt")
    shutil.copyfile(ca, installed)
    try:
        subprocess.run(["update-ca-certificates"], check=True, capture_output=True)
        yield ca
    finally:
        installed.unlink()
        subprocess.run(["update-ca-certificates"], check=True, capture_output=True)


class Lines:
    def __init__(self) -> None:
        self.seen: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, line: str) -> None:
        with self.lock:
            self.seen.append(line)

    @property
    def text(self) -> str:
        return "\n".join(self.seen)


def build_log(stack: Stack, snapshot_id: str) -> str:
    """The whole log (the SDK follows it only if it polls while the build runs)."""
    return httpx.get(f"{stack.url}/api/snapshots/{snapshot_id}/build-logs", headers={
        "Authorization": f"Bearer {stack.api_key}", "Host": f"localhost:{stack.port}"}).text


TOOK: dict[str, float] = {}  # key -> seconds the SDK's upload of it took


@pytest.fixture
def uploads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The keys the SDK really uploaded (it skips those whose HEAD is 200)."""
    from daytona._sync.object_storage import ObjectStorage

    done: list[str] = []
    real = ObjectStorage._upload_as_tar

    def spy(self: Any, key: str, *args: Any, **kwargs: Any) -> None:
        done.append(key)
        started = time.monotonic()
        real(self, key, *args, **kwargs)
        TOOK[key] = time.monotonic() - started

    monkeypatch.setattr(ObjectStorage, "_upload_as_tar", spy)
    return done


def test_push_access_is_the_callers_organization_over_https(stack: Stack, trusted: Path) -> None:
    first = stack.api("GET", "/object-storage/push-access")
    assert first.status_code == 200, first.text
    access = first.json()
    assert set(access) == {"accessKey", "secret", "sessionToken", "storageUrl", "organizationId", "bucket", "region"}
    assert all(isinstance(v, str) and v for v in access.values())
    assert access["storageUrl"].startswith("https://127.0.0.1:")
    other = daytona(stack, extra_key(stack, f"ctx-other-{stack.port}"))
    theirs = other._object_storage_api.get_push_access()  # a new organization: s3proxy restarts with its key
    assert theirs.organization_id != access["organizationId"]
    assert theirs.access_key != access["accessKey"] and theirs.bucket != access["bucket"]
    assert theirs.storage_url == access["storageUrl"]  # the same port after the restart
    assert httpx.get(f"{stack.url}/api/object-storage/push-access",
                     headers={"Authorization": "Bearer nope", "Host": f"localhost:{stack.port}"}).status_code == 401


def test_local_files_reach_the_sandbox_and_a_second_create_skips_the_upload(
        stack: Stack, trusted: Path, tmp_path: Path, uploads: list[str]) -> None:
    from daytona import CreateSandboxFromImageParams, CreateSnapshotParams, Image

    d = daytona(stack)
    nonce = secrets.token_hex(4)  # fresh uploads and layers: stacks share the layers cache
    app = tmp_path / "app.py"
    app.write_text(f"print('hello from a local file {nonce}')\n")
    project = tmp_path / "project"
    (project / "pkg").mkdir(parents=True)
    for index in range(5):
        (project / f"f{index}.txt").write_text(f"{index} {nonce}")
    (project / "pkg" / "mod.py").write_text("X = 1\n")
    big = tmp_path / "big"
    big.mkdir()
    for index in range(4):
        (big / f"blob{index}").write_bytes(os.urandom(5 << 20))
    wheels = tmp_path / "wheels"
    tiny_wheel(wheels, "tinypkg", "0.1", f"from-an-uploaded-wheel-{nonce}")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("tinypkg==0.1\n")
    image = (Image.base("default")
             .add_local_file(app, "/app/app.py")
             .add_local_dir(project, "/app/project")
             .add_local_dir(wheels, "/wheels")
             .pip_install_from_requirements(str(requirements), find_links=["/wheels"],
                                            extra_options="--no-index --break-system-packages")
             .add_local_dir(big, "/data"))
    lines = Lines()
    started = time.monotonic()
    sandbox = d.create(CreateSandboxFromImageParams(image=image), on_snapshot_create_logs=lines, timeout=300)
    print(f"\n20 MB + 3 small contexts uploaded, built and started in {time.monotonic() - started:.1f} s "
          f"(the 20 MB upload: {max(TOOK[key] for key in uploads):.1f} s)")
    try:
        assert len(uploads) == 5, uploads
        assert all(key.startswith(f"{d._object_storage_api.get_push_access().organization_id}/") for key in uploads)
        assert "matches its hash" in lines.text, lines.text
        run = sandbox.process.exec
        assert run("python3 /app/app.py").result.strip() == f"hello from a local file {nonce}"
        assert run("cat /app/project/f3.txt").result == f"3 {nonce}"
        assert run("cat /app/project/pkg/mod.py").result == "X = 1\n"
        assert run("python3 -c 'import tinypkg; print(tinypkg.VALUE)'").result.strip() == \
            f"from-an-uploaded-wheel-{nonce}"
        assert run("sha256sum /data/blob2").result.split()[0] == hashlib.sha256((big / "blob2").read_bytes()).hexdigest()
        assert int(run("cat /data/blob0 /data/blob1 /data/blob2 /data/blob3 | wc -c").result) == 20 << 20
    finally:
        sandbox.delete()

    # Again, as a named snapshot: every context is already there (HEAD 200), nothing uploaded.
    uploads.clear()
    started = time.monotonic()
    snapshot = d.snapshot.create(CreateSnapshotParams(name=f"ctx-{nonce}", image=image), on_logs=lines)
    print(f"the same image again as a snapshot in {time.monotonic() - started:.1f} s (no upload)")
    assert uploads == [] and snapshot.state == "active"
    d.snapshot.delete(snapshot)


def plant(attacker: Any, victim_org: str, target: Path, planted: Path) -> str:
    """Org B knows what org A is about to upload (a public requirements file, say) and A's
    organization id; it puts its own bytes at A's key first, with B's push-access, so that
    A's SDK sees HEAD 200 and skips its upload. The key's hash."""
    from daytona._sync.object_storage import ObjectStorage

    creds = attacker._object_storage_api.get_push_access()
    store = ObjectStorage(creds.storage_url, creds.access_key, creds.secret, creds.session_token, creds.bucket,
                          region=creds.region)
    archive = ObjectStorage.compute_archive_base_path(str(target))
    expected: str = store._compute_hash_for_path_md5(str(target), archive)
    store._upload_as_tar(f"{victim_org}/{expected}/context.tar", str(planted), archive)
    return expected


def victim_files(tmp_path: Path) -> tuple[Path, Path]:
    target = tmp_path / "victim" / "setup.sh"
    target.parent.mkdir()
    target.write_text(f"echo the victims own script {secrets.token_hex(4)}\n")
    planted = tmp_path / "planted" / "setup.sh"
    planted.parent.mkdir()
    planted.write_text("echo PLANTED by the attacker\n")
    return target, planted


def test_another_organization_cannot_write_this_ones_uploads(
        stack: Stack, trusted: Path, tmp_path: Path, uploads: list[str]) -> None:
    """The local server gives each organization its own key and bucket: B's planting lands in
    B's bucket, B's key is refused in A's, and A's build uses A's own upload."""
    from daytona import CreateSnapshotParams, Image
    from daytona._sync.object_storage import ObjectStorage
    from obstore.exceptions import PermissionDeniedError

    victim = daytona(stack)
    attacker = daytona(stack, extra_key(stack, f"ctx-attacker-{stack.port}"))
    target, planted = victim_files(tmp_path)
    mine = victim._object_storage_api.get_push_access()
    expected = plant(attacker, mine.organization_id, target, planted)
    theirs = attacker._object_storage_api.get_push_access()
    into_mine = ObjectStorage(theirs.storage_url, theirs.access_key, theirs.secret, theirs.session_token,
                              mine.bucket, region=theirs.region)
    with pytest.raises(PermissionDeniedError):
        into_mine._upload_as_tar(f"{mine.organization_id}/{expected}/context.tar", str(planted), "victim/setup.sh")
    with pytest.raises(PermissionDeniedError):
        into_mine._file_exists_in_s3(f"{mine.organization_id}/{expected}/context.tar")
    uploads.clear()
    snapshot = victim.snapshot.create(CreateSnapshotParams(name="isolated", image=Image.base("default")
                                                           .add_local_file(target, "/setup.sh")
                                                           .run_commands("sh /setup.sh")))
    assert uploads == [f"{mine.organization_id}/{expected}/context.tar"]  # B's object was not in A's bucket
    log = build_log(stack, snapshot.id)
    assert "the victims own script" in log and "PLANTED" not in log, log
    victim.snapshot.delete(snapshot)


def test_uploads_that_were_never_made_fail_the_build_and_bad_hashes_are_400s(stack: Stack) -> None:
    from daytona import DaytonaError

    d = daytona(stack)
    answer = stack.api("POST", "/snapshots", json={"name": "bad-hash", "buildInfo": {
        "dockerfileContent": "FROM default\nCOPY x /x\n", "contextHashes": ["../../etc"]}})
    assert answer.status_code == 400 and "md5" in answer.json()["message"]
    answer = stack.api("POST", "/snapshots", json={"name": "never", "buildInfo": {
        "dockerfileContent": "FROM default\nCOPY x /x\n", "contextHashes": ["0" * 32]}})
    assert answer.status_code == 200, answer.text
    deadline = time.monotonic() + 30
    while (record := d.snapshot.get("never")).state not in ("build_failed", "active") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert record.state == "build_failed" and "never uploaded" in record.error_reason
    d.snapshot.delete(record)
    with pytest.raises(DaytonaError):
        d.snapshot.get("never")


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


def _s3proxy_of(stack_pid: int, state_dir: Path) -> int | None:
    for pid in _descendants(stack_pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline[0].endswith(b"java") and str(state_dir).encode() in b" ".join(cmdline):
            return pid
    return None


def test_s3proxy_starts_on_first_use_and_dies_with_a_killed_main_job(tmp_path: Path) -> None:
    from tests.runtime_helpers import start_stack

    running = start_stack(tmp_path / "state", "--no-sandbox", pool_size=0)
    try:
        assert _s3proxy_of(running.process.pid, running.state_dir) is None  # nothing until it is needed
        started = time.monotonic()
        assert running.api("GET", "/object-storage/push-access").status_code == 200
        took = time.monotonic() - started
        java = _s3proxy_of(running.process.pid, running.state_dir)
        assert java is not None
        rss = next(int(line.split()[1]) for line in Path(f"/proc/{java}/status").read_text().splitlines()
                   if line.startswith("VmRSS:"))
        print(f"\ns3proxy: first push-access (start) {took:.1f} s, RSS {rss / 1024:.0f} MB")
        assert running.api("GET", "/object-storage/push-access").status_code == 200  # the same server
        assert _s3proxy_of(running.process.pid, running.state_dir) == java
        running.process.kill()  # no chance to stop anything
        running.process.wait()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{java}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not Path(f"/proc/{java}").exists(), "s3proxy outlived the main job"
    finally:
        running.stop()


def test_an_external_s3_by_configuration_serves_uploads_and_refuses_planted_ones(
        stack: Stack, trusted: Path, tmp_path: Path, uploads: list[str]) -> None:
    """The production path: a main job told CONTROLPLANE_S3_* (here: the other stack's
    s3proxy, as an operator's MinIO would be) hands that storage out and reads uploads back
    through obstore over HTTPS. Its keys are the same for every organization, so what an
    organization planted under another's key must fail that one's build."""
    from daytona import CreateSnapshotParams, DaytonaError, Image

    from tests.runtime_helpers import start_stack

    access = stack.api("GET", "/object-storage/push-access").json()
    external = start_stack(tmp_path / "state", "--no-sandbox", pool_size=0, extra_env={
        "CONTROLPLANE_S3_ENDPOINT": access["storageUrl"], "CONTROLPLANE_S3_ACCESS_KEY": access["accessKey"],
        "CONTROLPLANE_S3_SECRET_KEY": access["secret"], "CONTROLPLANE_S3_BUCKET": access["bucket"]})
    try:
        assert access["storageUrl"] in " ".join(external.banner_lines)
        theirs = external.api("GET", "/object-storage/push-access").json()
        assert theirs["storageUrl"] == access["storageUrl"] and theirs["sessionToken"] == ""
        note = tmp_path / "note.txt"
        note.write_text(f"through an external S3 {secrets.token_hex(4)}\n")
        d = daytona(external)
        snapshot = d.snapshot.create(CreateSnapshotParams(name="external", image=Image.base("default")
                                                          .add_local_file(note, "/note.txt")
                                                          .run_commands("cat /note.txt")))
        assert snapshot.state == "active"
        assert note.read_text().strip() in build_log(external, snapshot.id)
        assert _s3proxy_of(external.process.pid, external.state_dir) is None  # no local server of its own

        # Static keys every organization shares: the attack the build's hash check stops.
        attacker = daytona(external, extra_key(external, f"ext-attacker-{external.port}"))
        target, planted = victim_files(tmp_path)
        expected = plant(attacker, theirs["organizationId"], target, planted)
        uploads.clear()
        with pytest.raises(DaytonaError, match=f"does not match its hash {expected}"):
            d.snapshot.create(CreateSnapshotParams(name="planted", image=Image.base("default")
                                                   .add_local_file(target, "/setup.sh")
                                                   .run_commands("sh /setup.sh")))
        assert uploads == []  # the victim's SDK saw HEAD 200 and skipped its upload
        failed = d.snapshot.get("planted")
        assert failed.state == "build_failed" and "another organization may have put it there" in failed.error_reason
        assert "PLANTED" not in build_log(external, failed.id)
    finally:
        external.stop()


def test_without_the_jar_an_image_with_local_files_is_refused_naming_what_to_install(tmp_path: Path) -> None:
    from daytona import CreateSandboxFromImageParams, CreateSnapshotParams, DaytonaError, Image

    from tests.runtime_helpers import start_stack

    bare = start_stack(tmp_path / "state", "--no-sandbox", pool_size=0,
                       extra_env={"CONTROLPLANE_S3PROXY_JAR": str(tmp_path / "no.jar")})
    try:
        assert "none: Image.add_local_file/add_local_dir need the s3proxy" in " ".join(bare.banner_lines)
        (tmp_path / "app.py").write_text("print('hi')\n")
        d = daytona(bare)
        before = d.snapshot.list().total
        image = Image.base("default").add_local_file(tmp_path / "app.py", "/app/app.py")
        sandboxes = {s.id for s in d.list()}
        with pytest.raises(DaytonaError, match=r"has none: it needs the s3proxy 4\.1\.0 jar"):
            d.snapshot.create(CreateSnapshotParams(name="ctx", image=image))
        with pytest.raises(DaytonaError, match=r"has none: it needs the s3proxy 4\.1\.0 jar"):
            d.create(CreateSandboxFromImageParams(image=image))
        assert {s.id for s in d.list()} == sandboxes
        answer = bare.api("POST", "/snapshots", json={"name": "direct", "buildInfo": {
            "dockerfileContent": "FROM default\nCOPY x /x\n", "contextHashes": ["0" * 32]}})
        assert answer.status_code == 400 and answer.json()["code"] == "BUILD_CONTEXT_UNAVAILABLE"
        assert d.snapshot.list().total == before  # nothing recorded
    finally:
        bare.stop()
