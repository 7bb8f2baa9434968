"""A built snapshot's layers through its life, against the real main job and the official
SDK: deleted while a sandbox runs from it, the sandbox keeps working (stop, start, archive,
restore) and the layers stay; when its last sandbox goes they are freed, except what
another snapshot shares. Deleting a snapshot while it builds cancels the build and leaves
nothing. The stack's layers dir is its state dir's own (the tests' shared one is never
collected: other state dirs' snapshots live on it), the machine's default layer
hard-linked in."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import procfs
from tests.controlplane_helpers import daytona
from tests.layer_helpers import shared_default
from tests.runtime_helpers import Stack, start_stack

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="image builds and own roots need root")

GB = 1024 ** 3


def _private_layers(layers: Path) -> None:
    """A layers dir holding only the default snapshot: its layers hard-linked from the
    shared ones (immutable, so sharing inodes is safe), their sizes and its cache record."""
    from runtime.rootfs import build_key

    store, default = shared_default()
    for sub in (".meta", ".builds"):
        (layers / sub).mkdir(parents=True, mode=0o700)
    layers.chmod(0o700)
    for digest in default.layers:
        subprocess.run(["cp", "-al", str(store.layer_path(digest)), str(layers / digest)], check=True)
        (layers / f".meta/{digest}.json").write_bytes((store.layers_dir / f".meta/{digest}.json").read_bytes())
    name = f".builds/{build_key()}.json"
    (layers / name).write_bytes((store.layers_dir / name).read_bytes())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("lifecycle") / "state"
    _private_layers(state / "layers")  # the state dir's own (a layers dir elsewhere may be shared)
    running = start_stack(state, "--no-sandbox", pool_size=0, timeout=180,
                          extra_env={"RUNTIME_ROOTFS": "snapshot", "RUNTIME_LAYERS_DIR": str(state / "layers")})
    yield running
    running.stop()


def layers_of(stack: Stack) -> set[str]:
    return {p.name for p in Path(stack.env["RUNTIME_LAYERS_DIR"]).iterdir() if not p.name.startswith(".")}


def store_layers(stack: Stack, snapshot_id: str) -> tuple[str, ...]:
    record = stack.state_dir / "snapshots" / f"{snapshot_id}.json"  # the store name is the snapshot's id
    return tuple(json.loads(record.read_text())["layers"])


def eventually(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_a_deleted_snapshots_layers_stay_until_its_last_sandbox_goes(stack: Stack) -> None:
    from daytona import CreateSandboxFromSnapshotParams, CreateSnapshotParams, DaytonaError, Image

    d = daytona(stack)
    default = layers_of(stack)
    mark = secrets.token_hex(4)
    first = Image.base("default").run_commands(f"echo {mark} > /made-first")
    a = d.snapshot.create(CreateSnapshotParams(name="gc-a", image=first))
    # gc-b shares gc-a's layer (from the build cache) and adds one of its own.
    b = d.snapshot.create(CreateSnapshotParams(name="gc-b", image=first.run_commands("echo b > /made-second")))
    a_layers, b_layers = store_layers(stack, a.id), store_layers(stack, b.id)
    shared, own_b = a_layers[-1], b_layers[-1]
    assert b_layers == (*a_layers, own_b) and set(a_layers[:-1]) == default
    # `size` is the real disk use of the snapshot's layers, in GB as upstream reports it.
    sizes = {digest: json.loads((Path(stack.env["RUNTIME_LAYERS_DIR"]) / ".meta" / f"{digest}.json")
                                .read_text())["size"] for digest in b_layers}
    assert d.snapshot.get("gc-a").size == round(sum(sizes[x] for x in a_layers) / GB, 3) > 0.1

    sandbox = d.create(CreateSandboxFromSnapshotParams(snapshot="gc-a"), timeout=120)
    try:
        with pytest.raises(DaytonaError, match="in use by a running sandbox"):
            d.snapshot.delete(d.snapshot.get("gc-a"))
        sandbox.stop()
        d.snapshot.delete(d.snapshot.get("gc-a"))  # a stopped sandbox does not hold it
        assert "gc-a" not in {s.name for s in d.snapshot.list().items}
        assert shared in layers_of(stack)
        sandbox.start()
        assert sandbox.process.exec("cat /made-first").result.strip() == mark
        sandbox.stop()
        sandbox.start()
        assert sandbox.process.exec("cat /made-first").result.strip() == mark
        sandbox.stop()
        sandbox.archive()
        sandbox.start()  # restored from its archive, on the deleted snapshot's layers
        assert sandbox.process.exec("cat /made-first").result.strip() == mark

        d.snapshot.delete(d.snapshot.get("gc-b"))
        assert own_b not in layers_of(stack), "nothing uses gc-b's own layer: freed at once"
        assert shared in layers_of(stack), "the sandbox still uses the layer gc-b shared"
    finally:
        sandbox.delete()
    eventually(lambda: shared not in layers_of(stack), "the last user went, its layer did not")
    assert layers_of(stack) == default  # the default snapshot's layer stays, nothing else
    builds = Path(stack.env["RUNTIME_LAYERS_DIR"]) / ".builds"
    assert not [r for r in builds.glob("step-*.json") if {shared, own_b} & set(json.loads(r.read_text())["layers"])]


def test_deleting_a_snapshot_while_it_builds_cancels_the_build_and_leaves_nothing(stack: Stack) -> None:
    """The snapshot a sandbox from an image waits on, deleted mid-build: the step is gone,
    so are the layers the build had made and its records; the sandbox ends build_failed
    saying why."""
    d = daytona(stack)
    before = layers_of(stack)
    mark = secrets.token_hex(4)
    created = stack.api("POST", "/sandbox", json={"buildInfo": {"dockerfileContent": (
        f"FROM default\nRUN echo {mark} > /first\nRUN echo {mark}-sleeping; sleep 60\n")}})
    assert created.status_code == 200 and created.json()["state"] == "pending_build", created.text
    sandbox_id = created.json()["id"]
    (snapshot,) = [s for s in d.snapshot.list().items if s.name.startswith("image-") and s.state != "active"]

    def sleeping() -> list[int]:
        return [pid for pid in procfs.pids() if f"echo {mark}-sleeping;".encode() in procfs.cmdline(pid)]

    eventually(lambda: bool(sleeping()), "the second step never started", 60)
    assert len(layers_of(stack) - before) == 1  # the first step's layer
    started = time.monotonic()
    assert stack.api("DELETE", f"/snapshots/{snapshot.id}").status_code == 200
    assert time.monotonic() - started < 10  # cancelled, not waited for
    assert stack.api("GET", f"/snapshots/{snapshot.id}").status_code == 404
    assert stack.api("GET", f"/snapshots/{snapshot.id}/build-logs").status_code == 404
    eventually(lambda: not sleeping(), "the step outlived its cancelled build", 10)
    assert layers_of(stack) == before, "the cancelled build's layer stayed"
    layers = Path(stack.env["RUNTIME_LAYERS_DIR"])
    assert not list(layers.glob(".tmp-*")) and not list((stack.state_dir / "snapshots").glob(f"{snapshot.id}*"))
    eventually(lambda: stack.api("GET", f"/sandbox/{sandbox_id}").json()["state"] == "build_failed",
               "the waiting sandbox did not end build_failed", 10)
    assert "deleted while it was being built" in stack.api("GET", f"/sandbox/{sandbox_id}").json()["errorReason"]
    assert stack.api("DELETE", f"/sandbox/{sandbox_id}").status_code in (200, 204)
