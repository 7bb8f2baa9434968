"""Snapshots from images through the official SDK, against the real main job: images from a
real local registry, Dockerfile builds from `Image`, live build logs, states, failures."""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.controlplane_helpers import api_url, daytona, extra_key, stack_fixture
from tests.image_helpers import push_rootfs, registry_with_image, tiny_rootfs
from tests.runtime_helpers import Stack, start_stack

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="image builds need root (idmapped mounts)")

stack = stack_fixture("images", pool_size=0)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with registry_with_image(tmp_path_factory.mktemp("registry"), "tiny:1", tiny_rootfs,
                             {"FROM_IMAGE": "yes"}) as address:
        yield address


class Lines:
    """on_logs lines with the time each arrived."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, str]] = []
        self.lock = threading.Lock()

    def __call__(self, line: str) -> None:
        with self.lock:
            self.seen.append((time.monotonic(), line))

    def when(self, text: str) -> float:
        return next(t for t, line in self.seen if text in line)

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.seen)


def test_a_snapshot_is_built_from_an_image_with_live_logs(stack: Stack, registry: str) -> None:
    from daytona import CreateSnapshotParams, Image

    d = daytona(stack)
    lines = Lines()
    image = (Image.base(f"{registry}/tiny:1")
             # A nonce: test stacks share one layers dir, whose cache would skip a known step.
             .run_commands(f"echo first-step-output {secrets.token_hex(4)}; sleep 3; echo later > /built")
             .env({"GREETING": "hello world"}).workdir("/srv"))
    started = time.monotonic()
    snapshot = d.snapshot.create(CreateSnapshotParams(name="built-one", image=image), on_logs=lines)
    built_in = time.monotonic() - started
    assert snapshot.state == "active", lines.text
    # The step's output came while the build ran, not all at the end.
    assert lines.when("first-step-output") < lines.when("Created snapshot built-one") - 2, lines.text
    assert "Step 2/4 : RUN echo first-step-output" in lines.text
    got = d.snapshot.get("built-one")
    assert got.id == snapshot.id and got.state == "active" and got.size is not None and got.size > 0
    assert got.error_reason is None and "RUN echo first-step-output" in got.build_info.dockerfile_content
    assert "built-one" in {s.name for s in d.snapshot.list().items}
    print(f"\nbuilt a 1-step image in {built_in:.1f} s")

    # The same Dockerfile again under another name: every step from the cache.
    lines = Lines()
    started = time.monotonic()
    again = d.snapshot.create(CreateSnapshotParams(name="built-two", image=image), on_logs=lines)
    print(f"unchanged rebuild in {time.monotonic() - started:.1f} s (the SDK polls once a second)")
    assert again.state == "active"
    log = httpx.get(f"{api_url(stack)}/snapshots/{again.id}/build-logs",
                    headers={"Authorization": f"Bearer {stack.api_key}"}).text
    assert "(0 step(s) run, 2 from cache)" in log and "\nfirst-step-output" not in log, log
    for name in ("built-one", "built-two"):
        d.snapshot.delete(d.snapshot.get(name))
    assert not {"built-one", "built-two"} & {s.name for s in d.snapshot.list().items}


def test_a_snapshot_from_an_image_name_is_pulled(stack: Stack, registry: str) -> None:
    from daytona import CreateSnapshotParams

    d = daytona(stack)
    snapshot = d.snapshot.create(CreateSnapshotParams(name="pulled", image=f"{registry}/tiny:1"))
    try:
        assert snapshot.state == "active" and snapshot.image_name == f"{registry}/tiny:1"
        assert d.snapshot.get("pulled").size > 0
    finally:
        d.snapshot.delete(snapshot)


def test_failures_end_build_failed_with_the_reason(stack: Stack, registry: str) -> None:
    from daytona import CreateSnapshotParams, DaytonaError, Image

    d = daytona(stack)
    with pytest.raises(DaytonaError, match=r"Failed to create snapshot missing, reason: cannot pull .*nope:1.*"
                                           r"manifest unknown"):
        d.snapshot.create(CreateSnapshotParams(name="missing", image=f"{registry}/nope:1"))
    assert d.snapshot.get("missing").state == "build_failed"
    lines = Lines()
    with pytest.raises(DaytonaError, match="returned a non-zero code: 3"):
        d.snapshot.create(CreateSnapshotParams(
            name="failing", image=Image.base(f"{registry}/tiny:1").run_commands(
                # Slow enough for the SDK (polling once a second) to see `building` and follow the log.
                "echo the-reason-is-here; sleep 2; exit 3")),
            on_logs=lines)
    assert "the-reason-is-here" in lines.text
    failed = d.snapshot.get("failing")
    assert failed.state == "build_failed" and "non-zero code: 3" in failed.error_reason
    for name in ("missing", "failing"):
        d.snapshot.delete(d.snapshot.get(name))


def test_bad_requests_are_refused_before_anything_is_recorded(stack: Stack, registry: str) -> None:
    from daytona import CreateSnapshotParams, DaytonaError, Image

    d = daytona(stack)
    before = d.snapshot.list().total
    # Images with local files: tests/test_controlplane_contexts.py.
    with pytest.raises(DaytonaError, match="HEALTHCHECK is not supported"):
        d.snapshot.create(CreateSnapshotParams(name="hc", image=Image.base(f"{registry}/tiny:1")
                                               .dockerfile_commands(["HEALTHCHECK CMD true"])))
    with pytest.raises(DaytonaError, match="already exists"):
        d.snapshot.create(CreateSnapshotParams(name="default", image=f"{registry}/tiny:1"))
    assert stack.api("POST", "/snapshots", json={"name": "x"}).status_code == 400  # neither image nor buildInfo
    assert stack.api("POST", "/snapshots", json={"name": "x", "imageName": "oci:/etc:x"}).status_code == 200
    assert d.snapshot.list().total == before + 1
    failed = d.snapshot.get("x")
    deadline = time.monotonic() + 20
    while failed.state != "build_failed" and time.monotonic() < deadline:
        time.sleep(0.2)
        failed = d.snapshot.get("x")
    assert "not an image reference" in failed.error_reason  # never a path on the server
    d.snapshot.delete(failed)


def test_a_sandbox_from_an_image_goes_through_pending_build(stack: Stack, registry: str) -> None:
    from daytona import CreateSandboxFromImageParams, DaytonaError, Image

    d = daytona(stack)
    lines = Lines()
    image = Image.base(f"{registry}/tiny:1").run_commands("echo sandbox-build-output; exit 4")
    with pytest.raises(DaytonaError, match="(?i)build_failed"):  # the reason: when it polled (see below)
        d.create(CreateSandboxFromImageParams(image=image), on_snapshot_create_logs=lines, timeout=60)
    assert "sandbox-build-output" in lines.text, lines.text
    failed = [s for s in d.list() if s.state == "build_failed"]
    assert failed and "non-zero code: 4" in failed[0].error_reason
    for sandbox in failed:
        d.delete(sandbox)
    assert not [s for s in d.list() if s.state == "build_failed"]


def test_a_build_cut_short_by_a_restart_ends_build_failed(tmp_path: Path, registry: str) -> None:
    state = tmp_path / "state"
    running = start_stack(state, "--no-sandbox", pool_size=0)
    try:
        d = daytona(running)
        created = running.api("POST", "/snapshots", json={
            "name": "slow", "buildInfo": {"dockerfileContent": f"FROM {registry}/tiny:1\nRUN sleep 60\n"}})
        assert created.status_code == 200 and created.json()["state"] == "pending"
        deadline = time.monotonic() + 20
        while d.snapshot.get("slow").state != "building" and time.monotonic() < deadline:
            time.sleep(0.2)
        running.process.kill()  # no chance to record anything
        running.process.wait()
    finally:
        running.stop()
    restarted = start_stack(state, "--no-sandbox", pool_size=0, port=running.port)
    try:
        d = daytona(restarted)
        slow = d.snapshot.get("slow")
        assert slow.state == "build_failed" and "interrupted" in slow.error_reason
        layers = Path(running.env.get("RUNTIME_LAYERS_DIR") or state / "layers")
        assert not list(layers.glob(f".tmp-{running.process.pid}-*"))  # the dead build's trees are swept
    finally:
        restarted.stop()


def test_snapshot_states_reach_socketio_clients_of_the_organization(stack: Stack, registry: str) -> None:
    import socketio  # type: ignore[import-untyped]

    events: list[tuple[str, dict[str, Any]]] = []
    client = socketio.Client(reconnection=False)
    for name in ("snapshot.created", "snapshot.state.updated", "snapshot.removed"):
        client.on(name, lambda data, name=name: events.append((name, data)))
    client.connect(f"http://localhost:{stack.port}", socketio_path="/api/socket.io/",
                   auth={"token": stack.api_key}, transports=["websocket"], wait_timeout=5)
    try:
        from daytona import CreateSnapshotParams

        d = daytona(stack)
        snapshot = d.snapshot.create(CreateSnapshotParams(name="evented", image=f"{registry}/tiny:1"))
        d.snapshot.delete(snapshot)
        deadline = time.monotonic() + 10
        while not any(name == "snapshot.removed" for name, _ in events) and time.monotonic() < deadline:
            time.sleep(0.05)
        mine = [(name, data) for name, data in events if data.get("snapshot", data).get("id") == snapshot.id]
        assert [name for name, _ in mine] == ["snapshot.created", "snapshot.state.updated",
                                             "snapshot.state.updated", "snapshot.removed"], mine
        assert [(d["oldState"], d["newState"]) for n, d in mine if n == "snapshot.state.updated"] == [
            ("pending", "building"), ("building", "active")]
    finally:
        client.disconnect()


def test_another_organizations_snapshots_and_logs_are_404s(stack: Stack, registry: str) -> None:
    from daytona import CreateSnapshotParams, DaytonaNotFoundError

    other_key = extra_key(stack, f"images-other-{stack.port}")
    d, other = daytona(stack), daytona(stack, other_key)
    mine = d.snapshot.create(CreateSnapshotParams(name="private-one", image=f"{registry}/tiny:1"))
    try:
        with pytest.raises(DaytonaNotFoundError):
            other.snapshot.get(mine.id)
        assert "private-one" not in {s.name for s in other.snapshot.list().items}
        for path in (f"/snapshots/{mine.id}/build-logs", f"/snapshots/{mine.id}/build-logs-url",
                     f"/snapshots/{mine.id}/activate"):
            method = "POST" if path.endswith("activate") else "GET"
            answer = httpx.request(method, f"{api_url(stack)}{path}", headers={"Authorization": f"Bearer {other_key}"})
            assert answer.status_code == 404, (path, answer.text)
        assert httpx.delete(f"{api_url(stack)}/snapshots/{mine.id}",
                            headers={"Authorization": f"Bearer {other_key}"}).status_code == 404
        # Names are per organization: the other one may use the same.
        theirs = other.snapshot.create(CreateSnapshotParams(name="private-one", image=f"{registry}/tiny:1"))
        assert theirs.id != mine.id
        other.snapshot.delete(theirs)
    finally:
        d.snapshot.delete(mine)


def _own_roots() -> bool:
    import inspect

    from runtime.manager import Runtime

    return "rootfs_mode" in inspect.signature(Runtime.__init__).parameters


@pytest.mark.skipif(not _own_roots(), reason="needs sandboxes with their own root (issue 15's launcher)")
def test_a_sandbox_from_an_image_runs_what_the_build_installed(tmp_path: Path, registry: str) -> None:
    """The issue's test: `Image.base("<local registry>/debian:bookworm-slim").run_commands(...)
    .env(...)` plus a pip_install from a local index, through `daytona.create(
    CreateSandboxFromImageParams(...), on_snapshot_create_logs=...)`: logs arrive while it
    builds, the sandbox starts, the installed software runs. The registry's Debian image is
    the default snapshot's root file system (its layers merged), pushed there."""
    from daytona import CreateSandboxFromImageParams, CreateSandboxFromSnapshotParams, CreateSnapshotParams, DaytonaError, Image

    from tests import net_helpers
    from tests.image_helpers import package_index, tiny_wheel
    from tests.layer_helpers import default_snapshot, overlay

    store, default = default_snapshot()
    with overlay(store.lower_dirs(default.layers), tmp_path / "view") as root:  # its layers as one
        push_rootfs(root, tmp_path, f"{registry}/debian:bookworm-slim")
    tiny_wheel(tmp_path / "wheels", "tinypkg", "0.1", "from-the-local-index")
    if not net_helpers.is_root():
        pytest.skip("build steps reach a package index only on the sandbox network (root, nftables)")
    # Build steps run on the sandbox network (never the host's): the index is on the fake
    # internet, which the runtime's NAT reaches; block-all off, as it blocks steps too.
    internet = net_helpers.internet()
    try:
        running = start_stack(tmp_path / "state", "--no-sandbox", pool_size=0,
                              extra_env={"RUNTIME_ROOTFS": "snapshot", "RUNTIME_LAYERS_DIR": str(store.layers_dir),
                                         "RUNTIME_NETWORK_BLOCK_ALL": "0",
                                         "RUNTIME_SANDBOX_NETWORK": net_helpers.runtime_range()})
    except BaseException:
        internet.close()
        raise
    try:
        d = daytona(running)
        with package_index(tmp_path / "wheels", internet.name, net_helpers.INTERNET_A) as index:
            image = (Image.base(f"{registry}/debian:bookworm-slim")
                     .run_commands(f"echo {secrets.token_hex(4)}",  # a fresh build, not the shared cache's
                                   "printf '#!/bin/sh\\necho hello from the image: $GREETING\\n' > /usr/local/bin/hello",
                                   "chmod 0755 /usr/local/bin/hello", "sleep 2",
                                   # The SDK's pip_install runs `python`; Debian names it python3.
                                   "ln -s /usr/bin/python3 /usr/local/bin/python")
                     .env({"GREETING": "built here"})
                     .pip_install("tinypkg", find_links=[index],
                                  extra_options=f"--no-index --break-system-packages --trusted-host {net_helpers.INTERNET_A}"))
            lines = Lines()
            started = time.monotonic()
            try:
                sandbox = d.create(CreateSandboxFromImageParams(image=image), on_snapshot_create_logs=lines,
                                   timeout=300)
            except Exception as exc:
                raise AssertionError(f"{exc}\n{lines.text}") from None
            print(f"\nimage built and sandbox started in {time.monotonic() - started:.1f} s")
        try:
            assert "Successfully installed tinypkg-0.1" in lines.text, lines.text
            # Each RUN ran on a slot of the runtime's own sandbox network, NAT-ed (not the host's).
            assert "NAT egress as a sandbox's" in lines.text and "without network" not in lines.text, lines.text
            assert lines.seen[0][0] < time.monotonic() - 2  # lines came while it built
            assert sandbox.process.exec("hello").result.strip() == "hello from the image: built here"
            assert sandbox.process.exec(
                "python3 -c 'import tinypkg; print(tinypkg.VALUE)'").result.strip() == "from-the-local-index"
            # The same image as a named snapshot: every layer from the cache, then a sandbox of it.
            d.snapshot.create(CreateSnapshotParams(name="hello", image=image))
            again = d.create(CreateSandboxFromSnapshotParams(snapshot="hello"), timeout=120)
            try:
                assert again.process.exec("hello").result.strip() == "hello from the image: built here"
                with pytest.raises(DaytonaError, match="in use by a running sandbox"):
                    d.snapshot.delete(d.snapshot.get("hello"))
                assert again.process.exec("hello").result.strip() == "hello from the image: built here"
                again.stop()
                d.snapshot.delete(d.snapshot.get("hello"))  # only stopped sandboxes use it now
                again.start()  # and still starts: its layers stayed
                assert again.process.exec("hello").result.strip() == "hello from the image: built here"
            finally:
                again.delete()
        finally:
            sandbox.delete()
    finally:
        running.stop()
        internet.close()


def test_a_followed_build_log_streams_and_ends_with_the_build(stack: Stack, registry: str) -> None:
    created = stack.api("POST", "/snapshots", json={"name": "followed", "buildInfo": {"dockerfileContent": (
        f"FROM {registry}/tiny:1\nRUN echo before-the-pause {secrets.token_hex(4)}; sleep 3; echo after-the-pause\n")}})
    assert created.status_code == 200, created.text
    snapshot_id = created.json()["id"]
    url = stack.api("GET", f"/snapshots/{snapshot_id}/build-logs-url").json()["url"]
    assert url.endswith(f"/snapshots/{snapshot_id}/build-logs") and "?" not in url
    arrivals: list[tuple[float, bytes]] = []
    with httpx.stream("GET", f"{api_url(stack)}/snapshots/{snapshot_id}/build-logs?follow=true", timeout=60,
                      headers={"Authorization": f"Bearer {stack.api_key}"}) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        for chunk in response.iter_raw():
            arrivals.append((time.monotonic(), chunk))
    ended = time.monotonic()
    text = b"".join(c for _, c in arrivals).decode()
    first = next(t for t, c in arrivals if b"before-the-pause" in c)
    assert ended - first > 2, text  # streamed while the step ran, not at the end
    assert "after-the-pause" in text and "Snapshot followed is active" in text.splitlines()[-1], text
    assert stack.api("GET", f"/snapshots/{snapshot_id}").json()["state"] == "active"  # ended with the build
    assert stack.api("DELETE", f"/snapshots/{snapshot_id}").status_code == 200


def test_a_failed_build_reaches_the_sdk_with_its_reason(stack: Stack, registry: str) -> None:
    """Without on_snapshot_create_logs the SDK waits on Socket.IO events alone: the event of
    the failure must bring the reason along, not leave it `None`."""
    from daytona import CreateSandboxFromImageParams, DaytonaError, Image

    d = daytona(stack)
    # Slow enough that the SDK is waiting on events (not polling) when the build fails.
    image = Image.base(f"{registry}/tiny:1").run_commands(f"echo {secrets.token_hex(4)}; sleep 3; exit 5")
    with pytest.raises(DaytonaError) as raised:
        d.create(CreateSandboxFromImageParams(image=image), timeout=60)
    assert "non-zero code: 5" in str(raised.value), raised.value
    for sandbox in [s for s in d.list() if s.state == "build_failed"]:
        d.delete(sandbox)
