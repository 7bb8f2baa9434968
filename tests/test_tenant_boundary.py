"""Attacks on the tenant boundary (issue 13), each performed against the real main job from
code running inside a sandbox or from the network, and each asserted to fail now."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.codemount import is_daemon
from tests.runtime_helpers import Stack, needs_bwrap, start_stack

pytestmark = needs_bwrap


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    # A parent any local user may traverse (pytest's own tmp dirs are 0700), so the
    # state dir's own modes are what keeps other users out.
    base = Path(tempfile.mkdtemp(prefix="tenants-"))
    os.chmod(base, 0o755)
    running = start_stack(base / "state", pool_size=1)
    try:
        running.victim = running.cli("create", "--name", "victim")["id"]  # type: ignore[attr-defined]
        yield running
    finally:
        running.stop()
        shutil.rmtree(base, ignore_errors=True)


def whoami_via_token(stack: Stack, sandbox_id: str) -> str:
    """Which sandbox a request carrying only `sandbox_id`'s preview token executes in."""
    import httpx

    token = stack.preview_token(sandbox_id)
    response = httpx.post(f"{stack.url}/toolbox/{sandbox_id}/process/execute",
                          headers={"X-Daytona-Preview-Token": token, "Host": f"localhost:{stack.port}"},
                          json={"command": "printenv DAYTONA_SANDBOX_ID"}, timeout=30)
    assert response.status_code == 200, response.text
    return str(response.json()["result"]).strip()


def test_planted_socket_symlink_does_not_redirect_the_proxy(stack: Stack) -> None:
    attacker, victim = stack.first_id, stack.victim  # type: ignore[attr-defined]
    victim_socket = stack.inspect(victim)["socket"]
    control_socket = str(stack.state_dir / "control" / "api.sock")
    # The old attack: swap the daemon's socket for a link to another tenant's socket, in
    # every place the sandbox can write (its /run/toolbox was the host's socket dir).
    attack = (
        "for d in /run/toolbox $HOME /tmp " + str(stack.state_dir / "sockets") + "; do "
        f"  mkdir -p $d 2>/dev/null; mv $d/toolbox.sock $d/real.sock 2>/dev/null; "
        f"  ln -sf {victim_socket} $d/toolbox.sock 2>&1; "
        f"  ln -sf {victim_socket} $d/{attacker}.sock 2>&1; "
        f"  ln -sf {control_socket} $d/runtime.sock 2>&1; "
        "done; ls -la /run; ls -la " + str(stack.state_dir) + "; echo done"
    )
    _code, out = stack.execute(attacker, attack)
    assert out.rstrip().endswith("done"), out
    # Nothing the sandbox wrote is on the host path the proxy connects to.
    registry = json.loads((stack.state_dir / "registry.json").read_text())
    path = Path(registry["sandboxes"][attacker]["url"].removeprefix("unix:"))
    assert path == stack.state_dir / "sockets" / f"{attacker}.sock"
    # ... and the proxy checks the daemon's SO_PEERCRED against this uid on every connection.
    assert registry["sandboxes"][attacker]["uid"] == stack.inspect(attacker)["uid"]
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    sockets_dir = os.lstat(path.parent)
    assert sockets_dir.st_uid == os.geteuid() and stat.S_IMODE(sockets_dir.st_mode) == 0o700
    # Fresh connections (new proxy connections each time: stop/start drops the pool too).
    for _ in range(3):
        assert whoami_via_token(stack, attacker) == attacker
    assert whoami_via_token(stack, victim) == victim


def test_sandbox_sees_no_socket_of_the_host(stack: Stack) -> None:
    # Real sockets only (-type s): links the sandbox made in its own /tmp do not count.
    _code, out = stack.execute(stack.first_id, "find / -type s 2>/dev/null | grep -v ^/proc; echo end")
    assert out.split() == ["end"], out


@pytest.mark.skipif(os.geteuid() != 0, reason="sandboxes get their own uid only as root")
def test_daemon_socket_peer_is_the_sandbox_uid(stack: Stack) -> None:
    """The daemon listens itself, so SO_PEERCRED names the sandbox's uid, not root's."""
    described = stack.inspect(stack.first_id)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(str(described["socket"]))
        _pid, uid, _gid = struct.unpack("3i", client.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                               struct.calcsize("3i")))
    assert uid == described["uid"] != 0


def test_state_files_are_private(stack: Stack) -> None:
    state = stack.state_dir
    sandbox_dir = state / "sandboxes" / stack.first_id
    for directory in (state, state / "sandboxes", state / "pool", state / "sockets", sandbox_dir):
        assert stat.S_IMODE(os.lstat(directory).st_mode) == 0o700, directory
    for path in (state / "registry.json", sandbox_dir / "sandbox.json", sandbox_dir / "daemon.log",
                 state / "api-key", state / "proxy-secret"):
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600, path


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another local user")
def test_other_local_users_cannot_read_tokens(stack: Stack) -> None:
    import subprocess

    token = stack.preview_token(stack.first_id)
    for path in (stack.state_dir / "registry.json", stack.state_dir / "controlplane.db",
                 stack.state_dir / "sandboxes" / stack.first_id / "sandbox.json"):
        result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat", str(path)], check=False,
                                capture_output=True, text=True, timeout=10)
        assert result.returncode != 0 and token not in result.stdout
        assert "Permission denied" in result.stderr


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="sandboxes get uids of their own only as root")


def uid_range(state_dir: Path) -> range:
    recorded = json.loads((state_dir / "uids.json").read_text())
    return range(recorded["base"], recorded["base"] + recorded["size"])


@needs_root
def test_uids_are_never_reused_and_runtimes_never_share_them(stack: Stack, tmp_path: Path) -> None:
    used = {stack.inspect(s["id"])["uid"] for s in stack.cli("list")}
    short_lived = stack.cli("create", "--name", "short-lived")["id"]
    gone = stack.inspect(short_lived)["uid"]
    stack.cli("delete", short_lived)
    later_id = stack.cli("create", "--name", "later")["id"]
    later = stack.inspect(later_id)["uid"]
    stack.cli("delete", later_id)
    assert later != gone and gone not in used
    mine = uid_range(stack.state_dir)
    assert {gone, later, *used} <= set(mine)

    other = start_stack(tmp_path / "other", pool_size=0)
    try:
        theirs = uid_range(other.state_dir)
        assert set(theirs).isdisjoint(mine)
        first = other.inspect(other.first_id)["uid"]
        assert first in theirs
    finally:
        other.stop()
    # The high-water mark outlives a restart: the restarted runtime hands out a new uid.
    again = start_stack(tmp_path / "other", pool_size=0)
    try:
        assert uid_range(again.state_dir) == theirs
        assert again.inspect(again.cli("create", "--name", "after-restart")["id"])["uid"] > first
    finally:
        again.stop()


def test_uid_ranges_are_recorded_host_wide(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime import uids
    from runtime.uids import UidRange

    # A private list, and uids no real sandbox on this host runs as (/proc is host-wide).
    monkeypatch.setattr(uids, "FIRST_UID", 2_100_000_000)

    host = tmp_path / "host" / "uid-ranges.json"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = UidRange.open(tmp_path / "a", host)
    b = UidRange.open(tmp_path / "b", host)
    assert a.base + a.size <= b.base
    assert [a.allocate(), a.allocate()] == [a.base, a.base + 1]
    reopened = UidRange.open(tmp_path / "a", host)
    assert (reopened.base, reopened.next) == (a.base, a.base + 2)
    reopened.skip_past({a.base + 10})  # a sandbox on disk already has this one
    assert reopened.allocate() == a.base + 11
    assert stat.S_IMODE(os.stat(host).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "a" / "uids.json").st_mode) == 0o600
    # A range comes back only once its state dir is gone and none of its uids runs a process.
    shutil.rmtree(tmp_path / "a")
    (tmp_path / "c").mkdir()
    assert UidRange.open(tmp_path / "c", host).base == a.base
    (tmp_path / "d").mkdir()
    assert UidRange.open(tmp_path / "d", host).base > b.base  # b's state dir still exists


SYSCALL_PROBE = r'''
import ctypes, errno, json
libc = ctypes.CDLL(None, use_errno=True)
calls = {"io_uring_setup": (425, 8, 0), "keyctl": (250, 0, 0), "add_key": (248, 0, 0),
         "request_key": (249, 0, 0), "bpf": (321, 0, 0), "perf_event_open": (298, 0, 0),
         "userfaultfd": (323, 0), "unshare": (272, 0x10000000), "mount": (165, 0, 0, 0),
         "init_module": (175, 0, 0, 0), "kexec_load": (246, 0, 0, 0, 0), "setns": (308, 0, 0),
         "clone_newuser": (56, 0x10000000 | 17, 0, 0, 0, 0)}
out = {}
for name, (number, *args) in calls.items():
    ctypes.set_errno(0)
    result = libc.syscall(number, *[ctypes.c_long(a) for a in args])
    out[name] = errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno())) if result == -1 else "ok"
print(json.dumps(out))
'''


def test_dangerous_syscalls_fail_with_eperm_inside_a_sandbox(stack: Stack) -> None:
    with stack.toolbox(stack.first_id) as client:
        assert client.post("/files/upload", params={"path": "probe.py"},
                           files={"file": ("probe.py", SYSCALL_PROBE.encode())}).status_code == 200
    code, out = stack.execute(stack.first_id, "python probe.py")
    assert code == 0, out
    results = json.loads(out)
    assert results == {name: "EPERM" for name in results}, results
    # The keyring attack of issue 13: a key added in one sandbox for a later one to read.
    code, out = stack.execute(stack.first_id, "python -c \"import ctypes; libc = ctypes.CDLL(None, use_errno=True); "
                                              "print(libc.syscall(248, b'user', b'planted', b'x', 1, -3), ctypes.get_errno())\"")
    assert out.split() == ["-1", "1"], out  # add_key(..., KEY_SPEC_USER_KEYRING): EPERM
    # A call through the x32 ABI (another way into the syscall table) kills the caller: SIGSYS.
    code, out = stack.execute(stack.first_id, "python -c \"import ctypes; ctypes.CDLL(None).syscall(0x40000000 + 39)\"; "
                                              "echo status=$?")
    assert out.strip().endswith("status=159"), out


NORMAL_WORK = r'''
set -e
stat -c %a /dev/shm
python - <<'PY'
import multiprocessing, threading, concurrent.futures, os, pty, subprocess
with concurrent.futures.ThreadPoolExecutor(8) as pool:
    assert sum(pool.map(lambda x: x * 2, range(100))) == 9900
lock = multiprocessing.Lock()
with lock:
    pass
with multiprocessing.Pool(2) as procs:
    assert procs.map(abs, [-1, -2]) == [1, 2]
pid, fd = pty.fork()
if pid == 0:
    os.execvp("sh", ["sh", "-c", "tty; echo pty-ok"])
data = b""
while True:
    try:
        chunk = os.read(fd, 1024)
    except OSError:
        break
    if not chunk:
        break
    data += chunk
os.waitpid(pid, 0)
assert b"pty-ok" in data and b"/dev/pts/" in data, data
print("python-ok")
PY
git init -q work && cd work && git -c user.email=a@b -c user.name=a commit -q --allow-empty -m one && git log --oneline | wc -l
python -m pip --version >/dev/null && echo pip-ok
getent hosts localhost >/dev/null && cat /etc/nsswitch.conf /etc/os-release >/dev/null && echo etc-ok
'''


def test_normal_work_still_runs_under_the_filter(stack: Stack) -> None:
    with stack.toolbox(stack.first_id) as client:
        assert client.post("/files/upload", params={"path": "work.sh"},
                           files={"file": ("work.sh", NORMAL_WORK.encode())}).status_code == 200
    code, out = stack.execute(stack.first_id, "bash work.sh", timeout=60)
    assert code == 0 and out.split() == ["1777", "python-ok", "1", "pip-ok", "etc-ok"], out


def _has_cap_sys_resource() -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) & (1 << 24))
    return False


@needs_root
def test_daemon_oom_score_adj_is_the_real_value(stack: Stack) -> None:
    described = stack.inspect(stack.first_id)
    pid = described["daemon_pid"]
    assert pid is not None
    assert is_daemon(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"))
    real = int(Path(f"/proc/{pid}/oom_score_adj").read_text())
    assert described["daemon_oom_score_adj"] == real
    # Below 0 needs CAP_SYS_RESOURCE, which some containers drop (the runtime logs it).
    assert real == (-900 if _has_cap_sys_resource() else 0)


@needs_root
def test_host_replacing_etc_passwd_does_not_break_a_running_sandbox(tmp_path: Path) -> None:
    """What a package install does to /etc/passwd (a new file renamed into place), done in
    a mount namespace of the test's own so the real host's /etc is never touched."""
    import subprocess

    etc_copy = tmp_path / "etc"
    subprocess.run(["cp", "-a", "/etc", str(etc_copy)], check=True)
    holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                               f"mount --bind {etc_copy} /etc && echo ready && exec sleep 600"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        enter = ("nsenter", f"--mount=/proc/{holder.pid}/ns/mnt", "--")
        isolated = start_stack(tmp_path / "state", pool_size=0, prefix=enter)
        try:
            sandbox = isolated.first_id
            assert isolated.execute(sandbox, "whoami") == (0, "daytona\n")
            replacement = etc_copy / ".passwd.new"
            replacement.write_text((etc_copy / "passwd").read_text())
            os.rename(replacement, etc_copy / "passwd")
            group = etc_copy / ".group.new"
            group.write_text((etc_copy / "group").read_text())
            os.rename(group, etc_copy / "group")
            assert isolated.execute(sandbox, "whoami; id -gn; getent passwd daytona | cut -d: -f6") == (
                0, "daytona\ndaytona\n/home/daytona\n")
            # The rest of /etc still follows the host, live.
            (etc_copy / "sandbox-probe.conf").write_text("old\n")
            os.chmod(etc_copy / "sandbox-probe.conf", 0o644)
            os.rename(etc_copy / "sandbox-probe.conf", etc_copy / "hosts")
            assert isolated.execute(sandbox, "cat /etc/hosts") == (0, "old\n")
        finally:
            isolated.stop()
    finally:
        holder.kill()
        holder.wait()


def test_a_socket_path_too_long_is_an_actionable_error(tmp_path: Path) -> None:
    import asyncio

    from runtime.manager import Runtime, SandboxError

    async def attempt() -> tuple[SandboxError, Runtime]:
        runtime = Runtime(tmp_path / ("deep" * 25), pool_size=0, idle_timeout=0)
        await runtime.open()
        try:
            with pytest.raises(SandboxError) as caught:
                await runtime.create("x")
        finally:
            await runtime.close()
        return caught.value, runtime

    error, runtime = asyncio.run(attempt())
    assert "use a shorter state dir" in error.message
    assert runtime.specs == {} and not (runtime.sandboxes_dir / "x").exists()


def test_bwrap_command_binds_no_socket_dir_and_loads_the_filter(tmp_path: Path) -> None:
    from runtime.sandbox import SandboxDir, bwrap_argv

    sandbox = SandboxDir(tmp_path / "state" / "sandboxes" / "x")
    sandbox.create(os.getuid(), os.getgid())
    argv = bwrap_argv(sandbox, state_root=tmp_path / "state", egress="none", listen_fd=5, seccomp_fd=6)
    joined = " ".join(argv)
    assert "--setenv TOOLBOX_FD 5" in joined and "--seccomp 6" in joined
    assert "/run/toolbox" not in joined and "TOOLBOX_UDS" not in joined
    assert "--perms 1777 --tmpfs /dev/shm" in joined
    assert f"--ro-bind {sandbox.path / 'etc' / 'passwd'} /etc/passwd" in joined
    assert "--ro-bind /etc /run/host/etc" in joined and "--tmpfs /etc" in joined
    # Writable binds: the sandbox's home and tmp only.
    writable = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--bind"]
    assert writable == [str(sandbox.home), str(sandbox.tmp)]
