"""Volumes, snapshots, secrets, warm pools and per-sandbox settings through the official
SDK (`Daytona(DaytonaConfig(...))`) against the real main job (`./scripts/start`)."""

from __future__ import annotations

import os
import time
from typing import Any

import httpx

import pytest

from tests.controlplane_helpers import daytona, other_key_fixture, stack_fixture
from tests.runtime_helpers import Stack, needs_bwrap, start_stack

pytestmark = needs_bwrap


stack = stack_fixture("cpres", stores=["sqlite"])



other_key = other_key_fixture()


def api(stack: Stack, method: str, path: str, key: str | None = None, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, f"{stack.url}/api{path}", timeout=60, **kwargs,
                         headers={"Host": f"localhost:{stack.port}", "Authorization": f"Bearer {key or stack.api_key}"})


# -- volumes -------------------------------------------------------------------------------

def test_volumes_create_get_list_delete(stack: Stack) -> None:
    from daytona import DaytonaNotFoundError, DaytonaValidationError

    d = daytona(stack)
    volume = d.volume.create("vol-crud")
    assert volume.state == "ready" and volume.name == "vol-crud"
    assert d.volume.get("vol-crud").id == volume.id
    assert volume.id in [v.id for v in d.volume.list()]
    with pytest.raises(DaytonaValidationError, match="already exists"):
        d.volume.create("vol-crud")
    made = d.volume.get("vol-made-on-demand", create=True)
    assert made.state == "ready"
    d.volume.delete(volume)
    d.volume.delete(made)
    with pytest.raises(DaytonaNotFoundError):
        d.volume.get("vol-crud")
    assert not (stack.state_dir / "volumes" / volume.id).exists()


def test_two_sandboxes_share_a_volume_with_subpath(stack: Stack) -> None:
    from daytona import (
        CreateSandboxFromSnapshotParams,
        DaytonaConflictError,
        VolumeMount,
    )

    d = daytona(stack)
    volume = d.volume.create("vol-shared")
    a = d.create(CreateSandboxFromSnapshotParams(
        volumes=[VolumeMount(volume_id=volume.id, mount_path="/home/daytona/shared")]))
    b = d.create(CreateSandboxFromSnapshotParams(
        volumes=[VolumeMount(volume_id="vol-shared", mount_path="/home/daytona/sub", subpath="team/a")]))
    try:
        assert [v.volume_id for v in a.volumes] == [volume.id]
        assert b.volumes[0].volume_id == volume.id and b.volumes[0].subpath == "team/a"  # names resolve to ids
        a.process.exec("mkdir -p /home/daytona/shared/team/a && echo from-a > /home/daytona/shared/team/a/note")
        assert b.process.exec("cat /home/daytona/sub/note").result.strip() == "from-a"
        b.process.exec("echo from-b > /home/daytona/sub/reply")
        assert a.process.exec("cat /home/daytona/shared/team/a/reply").result.strip() == "from-b"
        with pytest.raises(DaytonaConflictError, match="in use"):
            d.volume.delete(volume)
        a.delete()
        with pytest.raises(DaytonaConflictError, match="in use"):
            d.volume.delete(volume)  # b still has it
    finally:
        b.delete()
    d.volume.delete(volume)  # free now
    # The files outlived the sandboxes until the volume went; a new volume starts empty.
    fresh = d.volume.create("vol-shared")
    c = d.create(CreateSandboxFromSnapshotParams(
        volumes=[VolumeMount(volume_id=fresh.id, mount_path="/home/daytona/shared")]))
    try:
        assert c.process.exec("ls -A /home/daytona/shared").result.strip() == ""
    finally:
        c.delete()
        d.volume.delete(fresh)


@pytest.mark.parametrize(("mount_path", "subpath", "message"), [
    ("relative/path", None, "absolute"),
    ("/", None, "must not be /"),
    ("/home/daytona/../etc", None, r"\.\."),
    ("/home//daytona", None, "//"),
    ("/etc/app", None, "/etc"),
    ("/proc", None, "/proc"),
    ("/home/daytona/data", "/abs", "relative"),
    ("/home/daytona/data", "a/../../b", r"\.\."),
])
def test_bad_mount_paths_are_400s_and_create_nothing(stack: Stack, mount_path: str, subpath: str | None,
                                                     message: str) -> None:
    from daytona import (
        CreateSandboxFromSnapshotParams,
        DaytonaValidationError,
        VolumeMount,
    )

    d = daytona(stack)
    volume = d.volume.get("vol-bad-paths", create=True)
    before = {s.id for s in d.list()}
    with pytest.raises(DaytonaValidationError, match=message):
        d.create(CreateSandboxFromSnapshotParams(
            volumes=[VolumeMount(volume_id=volume.id, mount_path=mount_path, subpath=subpath)]))
    assert {s.id for s in d.list()} == before


def test_a_symlinked_subpath_planted_in_a_volume_is_refused(stack: Stack) -> None:
    from daytona import (
        CreateSandboxFromSnapshotParams,
        DaytonaValidationError,
        VolumeMount,
    )

    d = daytona(stack)
    volume = d.volume.get("vol-symlink", create=True)
    a = d.create(CreateSandboxFromSnapshotParams(
        volumes=[VolumeMount(volume_id=volume.id, mount_path="/home/daytona/v")]))
    try:
        a.process.exec("ln -s /etc /home/daytona/v/escape")
        with pytest.raises(DaytonaValidationError, match="symbolic link"):
            d.create(CreateSandboxFromSnapshotParams(
                volumes=[VolumeMount(volume_id=volume.id, mount_path="/home/daytona/v", subpath="escape")]))
    finally:
        a.delete()


def test_unknown_and_foreign_volumes_are_404s(stack: Stack, other_key: str) -> None:
    from daytona import (
        CreateSandboxFromSnapshotParams,
        DaytonaNotFoundError,
        VolumeMount,
    )

    d, other = daytona(stack), daytona(stack, other_key)
    mine = d.volume.get("vol-private", create=True)
    with pytest.raises(DaytonaNotFoundError):
        d.create(CreateSandboxFromSnapshotParams(
            volumes=[VolumeMount(volume_id="no-such-volume", mount_path="/home/daytona/x")]))
    with pytest.raises(DaytonaNotFoundError):
        other.volume.get("vol-private")
    assert mine.id not in [v.id for v in other.volume.list()]
    with pytest.raises(DaytonaNotFoundError):
        other.create(CreateSandboxFromSnapshotParams(
            volumes=[VolumeMount(volume_id=mine.id, mount_path="/home/daytona/x")]))
    assert api(stack, "DELETE", f"/volumes/{mine.id}", key=other_key).status_code == 404
    assert d.volume.get("vol-private").id == mine.id
    # The same name is free in the other organization.
    assert other.volume.create("vol-private").id != mine.id


# -- snapshots -----------------------------------------------------------------------------

def test_the_default_snapshot_is_listed_gettable_and_cannot_be_deleted(stack: Stack) -> None:
    from daytona import DaytonaError, DaytonaNotFoundError
    from daytona_api_client.exceptions import BadRequestException

    d = daytona(stack)
    page = d.snapshot.list()
    assert page.total == 1 and page.page == 1 and page.total_pages == 1
    default = page.items[0]
    assert default.name == "default" and default.general and default.state == "active"
    assert d.snapshot.get("default").id == default.id == d.snapshot.get(default.id).id
    with pytest.raises(DaytonaNotFoundError):
        d.snapshot.get("no-such-snapshot")
    with pytest.raises(DaytonaError, match="cannot be deleted") as deleted:
        d.snapshot.delete(default)
    assert deleted.value.status_code == 403
    # snapshot.activate, like secret and warm-pool calls, lets the generated client's
    # exception through (the SDK wraps no error there): that is the precise class.
    with pytest.raises(BadRequestException, match="already active"):
        d.snapshot.activate(default)
    assert d.snapshot.list(page=2, limit=1).items == []
    assert api(stack, "GET", "/snapshots?limit=0").status_code == 400
    from daytona import CreateSandboxFromSnapshotParams

    sandbox = d.create(CreateSandboxFromSnapshotParams(snapshot=default.id))  # by id as well as by name
    try:
        assert sandbox.snapshot == "default"
    finally:
        sandbox.delete()


# Image builds: tests/test_controlplane_images.py; with local files (and without object
# storage): tests/test_controlplane_contexts.py.


# -- secrets -------------------------------------------------------------------------------

def test_secrets_are_stored_never_returned_and_injected(stack: Stack, other_key: str) -> None:
    from daytona import (
        CreateSandboxFromSnapshotParams,
        CreateSecretParams,
        DaytonaNotFoundError,
    )
    from daytona_api_client.exceptions import NotFoundException

    d = daytona(stack)
    value = "s3cr3t-value-" + str(time.time_ns())
    created = d.secret.create(CreateSecretParams(name="api-token", value=value, hosts=["api.example.com"]))
    raw = api(stack, "POST", "/secret", json={"name": "raw-secret", "value": value})
    assert raw.status_code == 201 and value not in raw.text
    assert created.placeholder and value not in created.placeholder
    listed = api(stack, "GET", "/secret/paginated?limit=1")
    assert listed.status_code == 200 and value not in listed.text
    first = listed.json()
    assert first["total"] == 2 and len(first["items"]) == 1 and first["nextCursor"]
    second = api(stack, "GET", f"/secret/paginated?limit=1&cursor={first['nextCursor']}").json()
    assert second["nextCursor"] is None and {first["items"][0]["id"], second["items"][0]["id"]} == {
        created.id, raw.json()["id"]}
    assert d.secret.get(created.id).hosts == ["api.example.com"]
    with pytest.raises(NotFoundException):
        daytona(stack, other_key).secret.get(created.id)
    assert api(stack, "GET", "/secret/paginated", key=other_key).json()["total"] == 0

    sandbox = d.create(CreateSandboxFromSnapshotParams(secrets={"API_TOKEN": "api-token"}))
    try:
        assert sandbox.process.exec("printenv API_TOKEN").result.strip() == value
        assert value not in api(stack, "GET", f"/sandbox/{sandbox.id}").text
        # Replacing the sandbox's secrets applies at its next start.
        d.secret.create(CreateSecretParams(name="other-token", value="second-value"))
        sandbox.update_secrets({"OTHER": "other-token"})
        sandbox.stop()
        sandbox.start()
        assert sandbox.process.exec("printenv OTHER").result.strip() == "second-value"
        assert sandbox.process.exec("printenv API_TOKEN").exit_code != 0
        # A new value of a named secret reaches the sandbox at its next start too.
        other_id = next(s["id"] for s in api(stack, "GET", "/secret/paginated").json()["items"]
                        if s["name"] == "other-token")
        assert api(stack, "PATCH", f"/secret/{other_id}", json={"value": "rotated-value"}).status_code == 200
        sandbox.stop()
        sandbox.start()
        assert sandbox.process.exec("printenv OTHER").result.strip() == "rotated-value"
        state = stack.state_dir / "sandboxes" / sandbox.id / "sandbox.json"
        assert oct(state.stat().st_mode & 0o777) == "0o600"  # it holds the injected value
    finally:
        sandbox.delete()
    with pytest.raises(DaytonaNotFoundError, match="no-such-secret"):
        d.create(CreateSandboxFromSnapshotParams(secrets={"X": "no-such-secret"}))
    d.secret.delete(raw.json()["id"])
    with pytest.raises(NotFoundException):
        d.secret.get(raw.json()["id"])


# -- warm pools ----------------------------------------------------------------------------

def test_warm_pools_size_the_runtimes_pool(stack: Stack, other_key: str) -> None:
    from daytona_api_client.exceptions import BadRequestException, NotFoundException

    d = daytona(stack)
    pool = d.warm_pool.create("default", 2)
    assert pool.pool == 2 and pool.snapshot == "default"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        current = next(p for p in d.warm_pool.list() if p.id == pool.id).current_size
        if current == 2:
            break
        time.sleep(0.2)
    assert current == 2
    assert pool.id not in [p.id for p in daytona(stack, other_key).warm_pool.list()]
    with pytest.raises(NotFoundException):
        d.warm_pool.create("no-such-snapshot", 1)
    zero = api(stack, "POST", "/warm-pools", json={"snapshot": "default", "pool": 0})  # the SDK refuses 0 itself
    assert zero.status_code == 400 and "from 1 to 10" in zero.json()["message"]
    with pytest.raises(BadRequestException, match="from 0 to 10"):
        d.warm_pool.update(pool.id, 11)
    assert api(stack, "POST", "/warm-pools", json={"snapshot": "default", "pool": 1}).status_code == 409
    assert d.warm_pool.update(pool.id, 0).pool == 0
    d.warm_pool.delete(pool.id)
    assert pool.id not in [p.id for p in d.warm_pool.list()]


# -- per-sandbox settings ------------------------------------------------------------------

def test_network_settings_ssh_and_telemetry(stack: Stack) -> None:
    from datetime import UTC, datetime, timedelta

    from daytona import DaytonaError, DaytonaNotFoundError, DaytonaValidationError

    d = daytona(stack)
    sandbox = d.create()
    try:
        # Applied live and read back (what it does to traffic: tests/test_network_stack.py).
        sandbox.update_network_settings(network_block_all=True)
        assert sandbox.network_block_all is True and d.get(sandbox.id).network_block_all is True
        with pytest.raises(DaytonaValidationError, match="invalid domainAllowList entry"):
            sandbox.update_network_settings(domain_allow_list="not a domain")
        assert d.get(sandbox.id).network_allow_list is None
        with pytest.raises(DaytonaError, match="SSH access is not available") as ssh:
            sandbox.create_ssh_access()
        assert ssh.value.status_code == 501
        now = datetime.now(UTC)
        assert sandbox.get_metrics(now - timedelta(minutes=5), now) == []
    finally:
        sandbox.delete()
    assert api(stack, "POST", "/sandbox/no-such-sandbox/ssh-access").status_code == 404
    with pytest.raises(DaytonaNotFoundError):
        d.get(sandbox.id)


def test_config_names_this_servers_proxy(stack: Stack) -> None:
    from daytona_api_client.models.daytona_configuration import DaytonaConfiguration

    response = httpx.get(f"{stack.url}/api/config", headers={"Host": f"localhost:{stack.port}"})
    assert response.status_code == 200
    config = DaytonaConfiguration.from_dict(response.json())
    assert config is not None and config.default_snapshot == "default"
    assert config.proxy_toolbox_url == f"http://localhost:{stack.port}/toolbox"
    assert config.proxy_template_url == f"http://{{{{PORT}}}}-{{{{sandboxId}}}}.localhost:{stack.port}"
    assert config.analytics_api_url is None  # so get_metrics asks the control plane


def test_what_a_crash_in_a_volume_create_or_delete_left_is_settled_at_restart(tmp_path: Any) -> None:
    if os.environ.get("CONTROLPLANE_DATABASE_URL"):
        pytest.skip("reads the SQLite file of its own state directory")
    first = start_stack(tmp_path / "s", "--no-sandbox", pool_size=0)
    try:
        kept = daytona(first).volume.create("kept")
    finally:
        first.stop()
    # A delete interrupted after it marked the volume (files still there): ready again.
    from controlplane.store.db import open_engine, sqlite_url
    from controlplane.volumes.records import PENDING_DELETE, READY, VolumeRecords

    engine = open_engine(sqlite_url(tmp_path / "s" / "controlplane.db"))
    try:
        assert VolumeRecords(engine).set_state(kept.id, PENDING_DELETE, only_from=READY)
    finally:
        engine.dispose()
    orphan = tmp_path / "s" / "volumes" / "0f0f0f0f-dead-beef-0000-000000000000"
    orphan.mkdir()
    (orphan / "left-over").write_text("from a crash between the directory and its row")
    again = start_stack(tmp_path / "s", "--no-sandbox", pool_size=0)
    try:
        assert not orphan.exists()
        assert (tmp_path / "s" / "volumes" / kept.id).is_dir()
        assert daytona(again).volume.get("kept").state == "ready"
        daytona(again).volume.delete(kept)
    finally:
        again.stop()


def test_async_sdk_volumes_snapshots_secrets_and_signed_urls(stack: Stack) -> None:
    import asyncio

    from daytona import (
        AsyncDaytona,
        CreateSandboxFromSnapshotParams,
        CreateSecretParams,
        DaytonaConfig,
        DaytonaConflictError,
        VolumeMount,
    )

    async def scenario() -> None:
        async with AsyncDaytona(DaytonaConfig(api_url=f"http://localhost:{stack.port}/api",
                                              api_key=stack.api_key)) as d:
            volume = await d.volume.get("vol-async", create=True)
            assert volume.state == "ready"
            assert (await d.snapshot.get("default")).general
            await d.secret.create(CreateSecretParams(name="async-token", value="async-value"))
            sandbox = await d.create(CreateSandboxFromSnapshotParams(
                secrets={"TOKEN": "async-token"},
                volumes=[VolumeMount(volume_id="vol-async", mount_path="/home/daytona/v")]))
            try:
                assert (await sandbox.process.exec("printenv TOKEN")).result.strip() == "async-value"
                await sandbox.process.exec("echo async > /home/daytona/v/f")
                url = await sandbox.download_url("/home/daytona/v/f", ttl_seconds=60)
                async with httpx.AsyncClient(timeout=30) as client:
                    response = await client.get(url)
                assert response.status_code == 200 and response.content == b"async\n"
                try:
                    await d.volume.delete(volume)
                    raise AssertionError("a mounted volume was deleted")
                except DaytonaConflictError:
                    pass
            finally:
                await sandbox.delete()
            await d.volume.delete(volume)

    asyncio.run(scenario())
