"""The local object storage: s3proxy (gaul/s3proxy, a real S3 server) with its filesystem
backend under the state dir, HTTPS only, SigV2/V4, on 127.0.0.1. Each organization has its
own key pair and bucket (a properties file each; s3proxy refuses a key in another's bucket),
made on its first push-access, which restarts s3proxy (it reads keys at start only) on the
same port. `.ci/run` puts the jar in JAR_CACHE (or name it with CONTROLPLANE_S3PROXY_JAR).

The main job starts it on the first push-access (150 MB of JVM only where contexts are
used) as its child: `setpriv --pdeathsig KILL` has the kernel kill it when the main job
dies, even by SIGKILL; a close stops it. Objects are read back from its directory
directly (`fetch`): the same machine, no second TLS client to configure."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import anyio

from controlplane.objectstorage import tls
from controlplane.objectstorage.access import StorageAccess, StorageUnavailable
from runtime.private import open_private_append, private_dir, write_private

VERSION = "4.1.0"
JAR_ENV = "CONTROLPLANE_S3PROXY_JAR"
JAR_CACHE = Path(f"/var/cache/sandbox-toolbox/s3proxy/s3proxy-{VERSION}-jar-with-dependencies.jar")
REGION = "us-east-1"
START_TIMEOUT = 60.0
# Small heap, serial GC, C1 only: it streams uploads to files and needs little of either.
JVM = ("-Xmx128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")
_LISTENING = re.compile(rb"ServerConnector@\w+\{SSL, [^}]*\}\{127\.0\.0\.1:(\d+)\}")


def _tail(path: Path, start: int) -> bytes:
    with open(path, "rb") as log:
        log.seek(start)
        return log.read()


def find_jar() -> Path | None:
    named = os.environ.get(JAR_ENV)
    candidates = [Path(named)] if named else [
        JAR_CACHE, Path.home() / f".m2/repository/org/gaul/s3proxy/{VERSION}/s3proxy-{VERSION}-jar-with-dependencies.jar"]
    return next((c for c in candidates if c.is_file()), None)


def missing() -> str | None:
    """What to install for the local object storage, or None when it can run."""
    wants = []
    if shutil.which("java") is None:
        wants.append("Java 17 or newer (apt-get install openjdk-17-jre-headless)")
    if find_jar() is None:
        wants.append(f"the s3proxy {VERSION} jar (Maven org.gaul:s3proxy:{VERSION}:jar-with-dependencies; .ci/run "
                     f"puts it in {JAR_CACHE}, or set {JAR_ENV})")
    if shutil.which("openssl") is None:
        wants.append("openssl")
    return " and ".join(wants) or None


@dataclass(frozen=True)
class Tenant:
    """An organization's own key pair and bucket: s3proxy lets a key reach only its bucket."""

    identity: str
    credential: str
    bucket: str


class LocalS3:
    isolated = True  # an organization's bucket takes its own key only

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.data = directory / "data"
        self.process: asyncio.subprocess.Process | None = None
        self.url: str | None = None
        self.port = 0  # kept across restarts: an SDK mid-upload retries at the same URL
        self._lock = asyncio.Lock()
        self._tenants: dict[str, Tenant] = {}
        self._served: set[str] = set()  # the organizations the running server has keys for
        self.tls: tls.Tls | None = None

    def prepare(self) -> None:
        """The CA, keystore and known organizations (blocking: at open, in a thread), so the
        banner can name the CA before anything is uploaded."""
        private_dir(self.directory)
        self.tls = tls.ensure(self.directory / "tls")
        try:
            saved = json.loads((self.directory / "tenants.json").read_text())
            self._tenants = {org: Tenant(**fields) for org, fields in saved.items()}
        except (OSError, ValueError, TypeError):
            self._tenants = {}

    def _tenant(self, organization_id: str) -> Tenant:
        """The organization's key pair and bucket, made and recorded on its first push-access."""
        found = self._tenants.get(organization_id)
        if found is not None:
            return found
        private_dir(self.data)
        while True:
            # Random, never derived from the organization: any key may create a bucket no
            # locator claims yet, so a predictable name could be made and filled in advance.
            found = Tenant("org-" + secrets.token_hex(8), secrets.token_urlsafe(30), "ctx-" + secrets.token_hex(16))
            try:
                os.mkdir(self.data / found.bucket, 0o700)  # the filesystem backend's bucket; new
                break
            except FileExistsError:
                continue
        self._tenants[organization_id] = found
        write_private(self.directory / "tenants.json", json.dumps(
            {org: vars(t) for org, t in self._tenants.items()}).encode())
        return found

    def _properties(self, tenant: Tenant) -> bytes:
        assert self.tls is not None
        return "\n".join([
            f"s3proxy.secure-endpoint=https://127.0.0.1:{self.port}",
            f"s3proxy.keystore-path={self.tls.keystore}",
            f"s3proxy.keystore-password={self.tls.password}",
            "s3proxy.authorization=aws-v2-or-v4",
            f"s3proxy.identity={tenant.identity}",
            f"s3proxy.credential={tenant.credential}",
            f"s3proxy.bucket-locator.1={tenant.bucket}",
            # The SDK sends x-amz-security-token (the push-access sessionToken); s3proxy
            # refuses headers it does not know unless told to ignore them.
            "s3proxy.ignore-unknown-headers=true",
            "jclouds.provider=filesystem",
            f"jclouds.filesystem.basedir={self.data}",
            "",
        ]).encode()

    def _write_properties(self, tenants: dict[str, Tenant]) -> list[str]:
        """s3proxy's arguments: a properties file per organization (its key, its bucket)."""
        private_dir(self.directory / "properties")
        arguments = []
        for tenant in tenants.values():
            path = self.directory / "properties" / f"{tenant.bucket}.properties"
            write_private(path, self._properties(tenant))
            arguments += ["--properties", str(path)]
        return arguments

    async def ready(self, organization_id: str) -> tuple[str, Tenant]:
        """The server's URL and the organization's keys, (re)starting the server when it does
        not run or does not know the organization yet (s3proxy reads keys at start only)."""
        async with self._lock:
            if self.tls is None:
                await anyio.to_thread.run_sync(self.prepare)
            tenant = await anyio.to_thread.run_sync(self._tenant, organization_id)
            running = self.process is not None and self.process.returncode is None and self.url is not None
            if not running or organization_id not in self._served:
                await self.stop()
                self.url = await self._start()
            assert self.url is not None
            return self.url, tenant

    async def _start(self) -> str:
        jar = find_jar()
        if jar is None or shutil.which("java") is None:
            raise StorageUnavailable(f"the local object storage needs {missing()}")
        tenants = dict(self._tenants)
        files = await anyio.to_thread.run_sync(self._write_properties, tenants)
        log_path = self.directory / "s3proxy.log"
        log_fd = open_private_append(log_path)
        start = os.fstat(log_fd).st_size
        try:
            self.process = await asyncio.create_subprocess_exec(
                "setpriv", "--pdeathsig", "KILL", "java", *JVM, "-jar", str(jar), *files,
                stdin=asyncio.subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, start_new_session=True,
                env={**os.environ, "LOG_LEVEL": "info"})
        finally:
            os.close(log_fd)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while loop.time() < deadline:
            found = _LISTENING.search(await anyio.to_thread.run_sync(_tail, log_path, start))
            if found:
                self.port = int(found.group(1))
                self._served = set(tenants)
                return f"https://127.0.0.1:{self.port}"
            if self.process.returncode is not None:
                raise StorageUnavailable(f"the local object storage (s3proxy) exited with code "
                                         f"{self.process.returncode}; its log is {log_path}")
            await asyncio.sleep(0.1)
        await self.stop()
        raise StorageUnavailable(f"the local object storage (s3proxy) did not start in {START_TIMEOUT:.0f} s; "
                                 f"its log is {log_path}")

    async def access(self, organization_id: str) -> StorageAccess:
        url, tenant = await self.ready(organization_id)
        # Static, but the organization's own: another's key is refused in this bucket.
        return StorageAccess(access_key=tenant.identity, secret=tenant.credential, session_token="local",
                             storage_url=url, organization_id=organization_id, bucket=tenant.bucket, region=REGION)

    async def fetch(self, organization_id: str, key: str, scratch: Path) -> Path | None:
        tenant = self._tenants.get(organization_id)
        if tenant is None:  # it never asked for push-access: nothing of it was uploaded
            return None
        path = self.data / tenant.bucket / key  # `key` is made of checked parts (contexts.key)
        return path if await anyio.to_thread.run_sync(path.is_file) else None

    async def stop(self) -> None:
        process, self.process, self.url = self.process, None, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            async with asyncio.timeout(10):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()
