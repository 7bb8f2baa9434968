"""File transfer figures for the toolbox daemon on loopback (prints numbers; not a test).

    .venv/bin/python benchmarks/files_bench.py [--size-mib 256] [--move-gib 1]

Measures, next to a plain local file copy (the physical limit of this machine):
  * GET /files/download of one file (raw HTTP client reading 4 MiB at a time; curl too if present)
  * the official SDK's download_file (bulk-download multipart, parsed by the SDK)
  * the official SDK's upload_file (bulk-upload multipart, built by httpx)
  * daemon RSS when idle, and its peak RSS growth while moving `--move-gib` through it
Targets: download >= 1 GiB/s, SDK download >= 500 MiB/s, SDK upload >= 400 MiB/s,
RSS growth < 32 MiB, idle RSS <= 45 MiB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import RunningDaemon, sdk_filesystem, start_daemon  # noqa: E402

MiB = 1024 * 1024


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not found")


def reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def timed(label: str, size: int, action: Callable[[], object], runs: int = 3) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - start)
    rate = size / MiB / best
    print(f"  {label:<44} {rate:8.0f} MiB/s  ({best * 1000:.0f} ms best of {runs})")
    return rate


def make_file(path: Path, size: int) -> None:
    block = os.urandom(MiB)
    with open(path, "wb") as handle:
        for _ in range(size // MiB):
            handle.write(block)


def http_download(daemon: RunningDaemon, remote: str, expect: int) -> None:
    with httpx.Client(base_url=daemon.url, timeout=120) as client:
        with client.stream("GET", "/files/download", params={"path": remote}) as response:
            response.raise_for_status()
            received = sum(len(chunk) for chunk in response.iter_raw(4 * MiB))
    assert received == expect, received


def socket_download(daemon: RunningDaemon, remote: str, expect: int) -> None:
    """A minimal HTTP/1.1 client reading into one reused buffer: what the server can do."""
    host, port = daemon.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(f"GET /files/download?path={remote} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        buffer = bytearray(4 * MiB)
        view = memoryview(buffer)
        received = 0
        while True:
            count = sock.recv_into(view)
            if not count:
                break
            received += count
    assert received > expect, received


def curl_download(daemon: RunningDaemon, remote: str) -> None:
    subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", f"{daemon.url}/files/download?path={remote}"], check=True
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--move-gib", type=float, default=1.0)
    args = parser.parse_args()
    size = args.size_mib * MiB

    with tempfile.TemporaryDirectory(prefix="files-bench-") as tmp_name:
        tmp = Path(tmp_name)
        daemon = start_daemon(tmp / "daemon")
        try:
            pid = daemon.process.pid
            fs = sdk_filesystem(daemon)
            fs.list_files("")  # one request, so the idle figure includes a served request
            time.sleep(0.5)
            idle = rss_kib(pid) / 1024
            print(f"daemon idle RSS: {idle:.1f} MiB (target <= 45)")

            source = tmp / "source.bin"
            make_file(source, size)
            shutil.copyfile(source, daemon.workdir / "big.bin")
            print(f"\n{args.size_mib} MiB file, from page cache, loopback:")
            copy_target = tmp / "copy.bin"

            def local_copy() -> None:
                copy_target.unlink(missing_ok=True)
                with open(source, "rb") as reader, open(copy_target, "wb") as writer:
                    # Userspace copy with 4 MiB buffers, like a client would do it.
                    shutil.copyfileobj(reader, writer, 4 * MiB)

            timed("local file copy, 4 MiB buffers (physical limit)", size, local_copy)
            copy_target.unlink()
            timed("GET /files/download (raw socket client)", size, lambda: socket_download(daemon, "big.bin", size))
            timed("GET /files/download (httpx, 4 MiB reads)", size, lambda: http_download(daemon, "big.bin", size))
            if shutil.which("curl"):
                timed("GET /files/download (curl)", size, lambda: curl_download(daemon, "big.bin"))
            local = tmp / "downloaded.bin"

            def sdk_download() -> None:
                local.unlink(missing_ok=True)  # time the download, not truncating the last one
                fs.download_file("big.bin", str(local))

            timed("SDK download_file to a local file", size, sdk_download)
            assert local.stat().st_size == size
            local.unlink()
            timed("SDK download_file into memory", size, lambda: fs.download_file("big.bin") and None)
            timed("SDK upload_file (bulk-upload)", size, lambda: fs.upload_file(str(source), "up.bin"))
            assert (daemon.workdir / "up.bin").stat().st_size == size

            moved_target = int(args.move_gib * 1024 * MiB)
            print(f"\nmoving {moved_target / MiB / 1024:.1f} GiB through the daemon (downloads and uploads):")
            before = rss_kib(pid)
            peak_reset = reset_peak(pid)
            moved = 0
            sampled_peak = before
            while moved < moved_target:
                http_download(daemon, "big.bin", size)
                sampled_peak = max(sampled_peak, rss_kib(pid))
                fs.download_file("big.bin", str(local))
                fs.upload_file(str(source), "up.bin")
                sampled_peak = max(sampled_peak, rss_kib(pid))
                moved += 3 * size
            peak = rss_kib(pid, "VmHWM") if peak_reset else sampled_peak
            growth = (peak - before) / 1024
            print(f"  moved {moved / MiB / 1024:.2f} GiB; RSS before {before / 1024:.1f} MiB, peak "
                  f"{peak / 1024:.1f} MiB -> growth {growth:.1f} MiB (target < 32)")
            print(f"  RSS after: {rss_kib(pid) / 1024:.1f} MiB")
        finally:
            daemon.stop()


if __name__ == "__main__":
    main()
