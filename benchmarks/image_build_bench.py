"""Image builds: pull from a local registry, a cold Dockerfile build, and an unchanged
rebuild (every layer from the cache), through the real builder (runtime/images/).

The base is a small root file system of the host's own tools pushed to a real local
docker-registry (tests/image_helpers.py), or with --base-dir any root file system (e.g. a
published layer of the default snapshot). Prints the import time, the cold build with its
per-step cost, and the rebuild, per run and as medians. --step-network: each RUN on a
slot of a sandbox network of its own, as a runtime with root and nftables gives steps
(runtime/images/stepnet.py; without it, steps have no network).

Usage (as root): .venv/bin/python benchmarks/image_build_bench.py [--runs 3] [--steps 5] [--step-network]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runtime import cgroups  # noqa: E402
from runtime.images.builder import Builder  # noqa: E402
from runtime.images.stepnet import StepNetworks  # noqa: E402
from runtime.images.steps import Confinement  # noqa: E402
from runtime.network import Network  # noqa: E402
from runtime.images.oci import ImageImporter, registry_reference  # noqa: E402
from runtime.snapshots import SnapshotStore  # noqa: E402
from tests.image_helpers import local_registry, push_rootfs, tiny_rootfs  # noqa: E402
from tests.net_helpers import runtime_range  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="RUN steps in the Dockerfile")
    parser.add_argument("--base-dir", type=Path, help="a root file system to push as the base image")
    parser.add_argument("--step-network", action="store_true", help="steps on a sandbox network slot each")
    args = parser.parse_args()
    rows: list[tuple[float, float, float, float]] = []
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        work = Path(tmp)
        networks: StepNetworks | None = None
        if args.step_network:
            net = Network(work / "net", runtime_range())
            net.open()
            networks = StepNetworks(net)
        try:
            run_all(args, work, networks, rows)
        finally:
            if networks is not None:
                networks.net.close()
    med = [statistics.median(col) for col in zip(*rows, strict=True)]
    print(f"median: pull+unpack {med[0]:.2f} s, cold build {med[1]:.2f} s ({med[2]:.2f} s per RUN), "
          f"unchanged rebuild {med[3] * 1000:.0f} ms")


def run_all(args: argparse.Namespace, work: Path, networks: StepNetworks | None,
            rows: list[tuple[float, float, float, float]]) -> None:
    with local_registry(work / "registry") as address:
        base = args.base_dir or tiny_rootfs(work / "rootfs")
        push_rootfs(base, work, f"{address}/base:1")
        runs = "".join(f"RUN echo step {i} > /step-{i}; echo done {i}\n" for i in range(args.steps))
        text = f"FROM {address}/base:1\nENV A=b\nWORKDIR /srv\n{runs}"
        for run in range(args.runs):
            store = SnapshotStore(work / f"state-{run}", layers_dir=work / f"layers-{run}")
            importer = ImageImporter(store, work / f"state-{run}" / "images")
            builder = Builder(store, importer, confinement=lambda: Confinement(cgroups.Backend(), network=networks))
            started = time.perf_counter()
            asyncio.run(importer.import_image(registry_reference(f"{address}/base:1"), lambda line: None))
            pull = time.perf_counter() - started
            started = time.perf_counter()
            cold = asyncio.run(builder.build(text, lambda line: None))
            cold_s = time.perf_counter() - started
            started = time.perf_counter()
            warm = asyncio.run(builder.build(text, lambda line: None))
            warm_s = time.perf_counter() - started
            assert warm.steps_run == 0 and warm.layers == cold.layers
            rows.append((pull, cold_s, cold_s / max(1, cold.steps_run), warm_s))
            print(f"run {run + 1}: pull+unpack {pull:.2f} s, cold build {cold_s:.2f} s "
                  f"({cold.steps_run} steps, {rows[-1][2]:.2f} s each), unchanged rebuild {warm_s * 1000:.0f} ms "
                  f"({warm.steps_cached} steps from the cache)", flush=True)


if __name__ == "__main__":
    main()
