"""Sandboxes with their own root through the real main job (`./scripts/start` with
RUNTIME_ROOTFS=snapshot) and the official Daytona SDK: `sudo` as the default user, the
control plane's `disk` as the quota (507 through the toolbox when it is full), writes
outside the home surviving stop/start, and the proxy's peer check on the new id ranges."""

from __future__ import annotations

import json
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.controlplane_helpers import daytona
from tests.layer_helpers import shared_default
from tests.runtime_helpers import Stack, start_stack

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="sandboxes with their own root need root")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    layers = shared_default()[0].layers_dir  # built once per machine, shared
    running = start_stack(tmp_path_factory.mktemp("cp-rootfs"), "--no-sandbox", pool_size=1,
                          extra_env={"RUNTIME_ROOTFS": "snapshot", "RUNTIME_LAYERS_DIR": str(layers)},
                          timeout=180)
    yield running
    running.stop()


def spec_of(stack: Stack, sandbox_id: str) -> dict[str, object]:
    data: dict[str, object] = json.loads((stack.state_dir / "sandboxes" / sandbox_id / "sandbox.json").read_text())
    return data


def test_sdk_sandbox_is_a_computer_with_sudo_and_a_quota(stack: Stack) -> None:
    from daytona import DaytonaError

    client = daytona(stack)
    # The SDK sends resources only with an image; Daytona's REST API takes `disk` for any.
    created = stack.api("POST", "/sandbox", json={"disk": 1})
    assert created.status_code == 200, created.text
    sandbox = client.get(created.json()["id"])
    try:
        result = sandbox.process.exec("id -un; sudo -n id -un; echo made | sudo -n tee /opt/made >/dev/null; "
                                      "cat /opt/made; df -B1M --output=size / | tail -1")
        assert result.exit_code == 0, result.result
        user, root, made, size_mib = result.result.split()
        assert (user, root, made) == ("daytona", "root", "made")
        assert 900 <= int(size_mib) <= 1024  # the plane's disk=1 is the root's size
        spec = spec_of(stack, sandbox.id)
        assert spec["disk_gib"] == 1 and spec["snapshot"] == "default"
        # The registry's uid for the proxy's SO_PEERCRED check is the daemon's host uid.
        registry = json.loads((stack.state_dir / "registry.json").read_text())
        assert registry["sandboxes"][sandbox.id]["uid"] == spec["uid"] == int(str(spec["id_base"])) + 1000
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(stack.state_dir / "sockets" / f"{sandbox.id}.sock"))
            _pid, uid, _gid = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        assert uid == spec["uid"]
        # Fill the quota, then an upload through the toolbox is Daytona's 507.
        full = sandbox.process.exec("fallocate -l 2G ~/fill || dd if=/dev/zero of=~/fill bs=1M 2>&1 | tail -1",
                                    timeout=120)
        assert "No space left on device" in full.result, full.result
        with pytest.raises(DaytonaError) as failed:
            sandbox.fs.upload_file(os.urandom(8 * 2**20), "/home/daytona/more.bin")
        assert failed.value.status_code == 507, failed.value
        sandbox.process.exec("rm -f ~/fill")
        sandbox.stop(timeout=60)
        sandbox.start(timeout=120)
        assert sandbox.process.exec("cat /opt/made").result.strip() == "made"
    finally:
        client.delete(sandbox, timeout=60)
    assert not (stack.state_dir / "sandboxes" / sandbox.id).exists()


def test_disk_defaults_to_the_planes_and_the_pool_serves_it(stack: Stack) -> None:
    client = daytona(stack)
    sandbox = client.create(timeout=120)
    try:
        spec = spec_of(stack, sandbox.id)
        image = Path(stack.state_dir / "sandboxes" / sandbox.id / "disk.img")
        assert spec["disk_gib"] == sandbox.disk and image.stat().st_size == sandbox.disk * 2**30
        # Sparse: an idle sandbox takes only what its upper layer holds.
        assert image.stat().st_blocks * 512 < 64 * 2**20
        result = sandbox.process.exec("cat /etc/os-release | head -1; test -e /work && echo LEAK; true")
        assert "Debian" in result.result and "LEAK" not in result.result
    finally:
        client.delete(sandbox, timeout=60)
