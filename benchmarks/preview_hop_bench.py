"""Previews of a real sandbox through the main job: one hop (app on 0.0.0.0, the proxy
connects to the sandbox's own address) against the daemon fallback (app on 127.0.0.1: a
refused connect to the address, then proxy -> daemon /proxy/{port} -> app).

    .venv/bin/python benchmarks/preview_hop_bench.py [--seconds 8] [--connections 32]

Root only (sandboxes get their own address). Starts `./scripts/start` with block-all (no
traffic leaves the host), one sandbox with two 100-byte aiohttp apps, then `wrk -t2` on
each preview host in turn. Prints requests/s and latency per path.
"""

from __future__ import annotations

import argparse
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.net_helpers import python_command  # noqa: E402
from tests.runtime_helpers import start_stack  # noqa: E402

APP = r'''
import sys
from aiohttp import web
async def small(request):
    return web.Response(body=b"x" * 100)
app = web.Application()
app.add_routes([web.get("/small", small)])
web.run_app(app, host=sys.argv[1], port=int(sys.argv[2]), print=None, access_log=None)
'''


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="hop-bench-")) / "state"
    stack = start_stack(state, "--no-sandbox", pool_size=0, extra_env={
        "RUNTIME_SANDBOX_NETWORK": f"10.213.{random.randrange(128, 250)}.0/24", "RUNTIME_NETWORK_BLOCK_ALL": "1"})
    try:
        created = stack.api("POST", "/sandbox", json={})
        assert created.status_code == 200, created.text
        sandbox_id = created.json()["id"]
        for host, port in (("0.0.0.0", 3000), ("127.0.0.1", 3001)):
            script = f"nohup {python_command(APP, host, str(port))} >/dev/null 2>&1 &".replace("'", "'\\''")
            code, out = stack.execute(sandbox_id, f"sh -c '{script}'")
            assert code == 0, out
        token = stack.preview_token(sandbox_id)
        for port in (3000, 3001):
            deadline = time.monotonic() + 30
            while stack.preview(sandbox_id, port, "/small", token=token).status_code != 200:
                assert time.monotonic() < deadline, f"app on {port} did not come up"
                time.sleep(0.2)
        for port, label in ((3000, "one hop (app on 0.0.0.0)"), (3001, "daemon fallback (app on 127.0.0.1)")):
            result = subprocess.run(
                ["wrk", "-t2", f"-c{args.connections}", f"-d{args.seconds}s", "--latency",
                 "-H", f"Host: {port}-{sandbox_id}.localhost:{stack.port}",
                 "-H", f"X-Daytona-Preview-Token: {token}", f"{stack.url}/small"],
                capture_output=True, text=True, timeout=args.seconds + 30)
            rps = re.search(r"Requests/sec:\s+([\d.]+)", result.stdout)
            p50 = re.search(r"^\s+50%\s+(\S+)", result.stdout, re.MULTILINE)
            errors = re.search(r"Non-2xx or 3xx responses: (\d+)", result.stdout)
            print(f"{label:40s} {float(rps.group(1)) if rps else 0:8.0f} req/s  p50 {p50.group(1) if p50 else '?'}"
                  f"  non-2xx {errors.group(1) if errors else 0}")
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
