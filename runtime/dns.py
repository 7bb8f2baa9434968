"""Daytona's `domainAllowList`: a dnsmasq per domain-listed sandbox that resolves only the
listed domains and adds every address it resolves for them to that sandbox's nftables set
(dnsmasq's `nftset=`), which the sandbox's egress rule allows (runtime/network.py).

One dnsmasq per sandbox, not per runtime, because dnsmasq reads `nftset=` only when it
starts: a live change restarts the resolver of that one sandbox, never another's; each
listens on exactly its own gateway address (`bind-interfaces`), so it is listening before
the sandbox can ask and no sandbox's lookups ever fill another's set. The cost is one
small process (~1 MB) per sandbox that has a domain list, none for the others.

Every other name gets NXDOMAIN without being forwarded (`address=/#/`): a listed sandbox
cannot tunnel data out through lookups of names of its own choosing. A listed name that
resolves into a private range opens nothing: the egress rule drops private destinations
before it looks at the set (dnsmasq's `stop-dns-rebind` is not used: it also refuses the
documentation ranges the tests stand the internet up in).

dnsmasq starts as root (binding port 53), then runs as `nobody` keeping only
CAP_NET_ADMIN (for the set). Its config is 0600 in the runtime's state dir (0700, where no
sandbox can write); it daemonizes once it listens, so `start` returns a listening
resolver or dnsmasq's own error. Its pid file is how `stop` and the sweep of a crashed
runtime's leftovers find it, checked against the process's command line first; the command
line alone (naming the config in the state dir) is how another runtime finds those of a
runtime that is gone (runtime/netranges.py), pid files and all.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from runtime.private import DIR_MODE, open_private_append, write_private

MAX_DOMAINS = 100  # Daytona documents no limit; a bound keeps a config and its set small
_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


class DnsError(Exception):
    """Bad input (`status` 400) or dnsmasq failing (500)."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_domain_list(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """Daytona's `domainAllowList` ("a.com,*.b.org") as normalized domains.

    `example.com` allows it and every subdomain (dnsmasq's matching); `*.example.com` only
    its subdomains. Lower-cased, IDNs as punycode, duplicates dropped."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    domains: list[str] = []
    for raw in (i.strip() for i in items):
        if not raw:
            continue
        wildcard = raw.startswith("*.")
        name = raw[2:] if wildcard else raw
        try:
            name = name.rstrip(".").encode("idna").decode("ascii").lower()
        except UnicodeError:
            name = ""
        labels = name.split(".")
        if len(labels) < 2 or len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
            raise DnsError(f"invalid domainAllowList entry {raw!r}: use domain names such as pypi.org "
                           "or *.example.com, separated by commas", 400)
        domain = f"*.{name}" if wildcard else name
        if domain not in domains:
            domains.append(domain)
    if len(domains) > MAX_DOMAINS:
        raise DnsError(f"domainAllowList has {len(domains)} entries: at most {MAX_DOMAINS} are allowed", 400)
    return tuple(domains)


def _unprivileged() -> list[str]:
    """dnsmasq's user and group lines: nobody/nogroup where they exist (Debian)."""
    lines = []
    try:
        pwd.getpwnam("nobody")
        lines.append("user=nobody")
    except KeyError:
        lines.append("user=root")  # dnsmasq would otherwise fail on a missing user
    for group in ("nogroup", "nobody"):
        try:
            grp.getgrnam(group)
        except KeyError:
            continue
        lines.append(f"group={group}")
        break
    return lines


class Resolvers:
    """The dnsmasq processes of one runtime's domain-listed sandboxes, by slot name."""

    def __init__(self, directory: Path, table: str, upstream: str | None) -> None:
        self.dir = directory
        self.table = table
        self.upstream = upstream

    @staticmethod
    def available() -> str | None:
        if shutil.which("dnsmasq") is None:
            return "dnsmasq is not installed (apt-get install dnsmasq-base)"
        return None

    def _conf(self, name: str) -> Path:
        return self.dir / f"{name}.conf"

    def _pid_file(self, name: str) -> Path:
        return self.dir / f"{name}.pid"

    def config(self, name: str, listen: str, nft_set: str, domains: Sequence[str]) -> str:
        assert self.upstream is not None
        servers = "/".join(domains)
        # nftset= matches a domain and its subdomains; `*.` is for server= alone (there it
        # means subdomains only, and the bare domain is never forwarded, so never added).
        bases = "/".join(sorted({d.removeprefix("*.") for d in domains}))
        return "\n".join([
            "port=53", f"listen-address={listen}", "bind-interfaces",
            "no-resolv", "no-hosts", "no-poll", "cache-size=1000",
            *_unprivileged(), f"pid-file={self._pid_file(name)}",
            f"server=/{servers}/{self.upstream}", "address=/#/",
            f"nftset=/{bases}/4#inet#{self.table}#{nft_set}", "",
        ])

    def start(self, name: str, listen: str, nft_set: str, domains: Sequence[str]) -> None:
        """(Re)start the slot's resolver; returns once it listens on `listen`:53."""
        if self.upstream is None:
            raise DnsError("domainAllowList needs a resolver for the sandboxes to forward to: the host has "
                           "no IPv4 nameserver in /etc/resolv.conf (set RUNTIME_SANDBOX_DNS)", 400)
        why = self.available()
        if why is not None:
            raise DnsError(f"domainAllowList needs {why}", 400)
        self.stop(name)
        self.dir.mkdir(mode=DIR_MODE, exist_ok=True)
        os.chmod(self.dir, DIR_MODE)
        conf = self._conf(name)
        write_private(conf, self.config(name, listen, nft_set, domains).encode())
        log_path = self.dir / f"{name}.log"
        log_path.unlink(missing_ok=True)
        fd = open_private_append(log_path)
        try:
            # dnsmasq forks once it listens (reporting setup errors before the parent exits).
            result = subprocess.run(["dnsmasq", f"--conf-file={conf}"], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=fd, timeout=30, check=False)
        finally:
            os.close(fd)
        if result.returncode != 0:
            message = log_path.read_text(errors="replace").strip()
            self.stop(name)
            raise DnsError(f"dnsmasq did not start (code {result.returncode}): {message}")

    def stop(self, name: str) -> None:
        """Stop the slot's resolver, if it runs, and remove its files."""
        pid_file, conf = self._pid_file(name), self._conf(name)
        pid = self._pid(pid_file)
        if pid is not None and self._is_ours(pid, conf):
            _terminate(pid)
        for path in (pid_file, conf, self.dir / f"{name}.log"):
            path.unlink(missing_ok=True)

    def running(self, name: str) -> bool:
        pid = self._pid(self._pid_file(name))
        return pid is not None and self._is_ours(pid, self._conf(name))

    def sweep(self) -> None:
        """Stop what a crashed runtime on this state dir left running."""
        if not self.dir.is_dir():
            return
        for pid_file in self.dir.glob("*.pid"):
            self.stop(pid_file.name.removesuffix(".pid"))
        shutil.rmtree(self.dir, ignore_errors=True)

    @staticmethod
    def stop_strays(directories: Sequence[Path]) -> None:
        """Stop every dnsmasq started with a config in one of `directories`, found by command
        line: what runtimes that are gone left, even once their state dirs (the pid files)
        are deleted. One pass over /proc however many."""
        flags = tuple(f"--conf-file={d}/".encode() for d in directories)
        if not flags:
            return
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                argv = cmdline.read_bytes().split(b"\0")
            except OSError:
                continue  # exited meanwhile
            if argv[0].rsplit(b"/", 1)[-1] == b"dnsmasq" and any(a.startswith(flags) for a in argv[1:]):
                _terminate(int(cmdline.parent.name))

    @staticmethod
    def _pid(pid_file: Path) -> int | None:
        try:
            return int(pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    @staticmethod
    def _is_ours(pid: int, conf: Path) -> bool:
        # A pid file can outlive its process and the pid be reused: only signal a dnsmasq
        # started with this very config file.
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return f"--conf-file={conf}".encode() in argv


def _terminate(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        if _gone(pid):
            return
        time.sleep(0.01)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _gone(pid: int) -> bool:
    """Exited (a zombie counts: its parent, init, reaps it in its own time)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")
