"""The local object storage: s3proxy (gaul/s3proxy, a real S3 server) with its filesystem
backend under the state dir, HTTPS only, SigV2/V4 with credentials kept in the state dir,
on 127.0.0.1. `.ci/run` puts the jar in JAR_CACHE (or name it with CONTROLPLANE_S3PROXY_JAR).

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
from pathlib import Path

import anyio

from controlplane.objectstorage import tls
from controlplane.objectstorage.access import StorageAccess, StorageUnavailable
from runtime.private import open_private_append, private_dir, write_private

VERSION = "4.1.0"
JAR_ENV = "CONTROLPLANE_S3PROXY_JAR"
JAR_CACHE = Path(f"/var/cache/sandbox-toolbox/s3proxy/s3proxy-{VERSION}-jar-with-dependencies.jar")
BUCKET = "contexts"
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


class LocalS3:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.data = directory / "data"
        self.process: asyncio.subprocess.Process | None = None
        self.url: str | None = None
        self._lock = asyncio.Lock()
        self._credentials: tuple[str, str] | None = None
        self.tls: tls.Tls | None = None

    def prepare(self) -> None:
        """The CA, keystore and credentials (blocking: at open, in a thread), so the banner can
        name the CA before anything is uploaded."""
        private_dir(self.directory)
        self.tls = tls.ensure(self.directory / "tls")
        record = self.directory / "credentials.json"
        try:
            saved = json.loads(record.read_text())
            self._credentials = (saved["identity"], saved["credential"])
        except (OSError, ValueError, KeyError):
            self._credentials = ("local-" + secrets.token_hex(8), secrets.token_urlsafe(30))
            identity, credential = self._credentials
            write_private(record, json.dumps({"identity": identity, "credential": credential}).encode())
        private_dir(self.data / BUCKET)  # the filesystem backend's bucket is a directory

    def _properties(self) -> bytes:
        assert self.tls is not None and self._credentials is not None
        return "\n".join([
            "s3proxy.secure-endpoint=https://127.0.0.1:0",
            f"s3proxy.keystore-path={self.tls.keystore}",
            f"s3proxy.keystore-password={self.tls.password}",
            "s3proxy.authorization=aws-v2-or-v4",
            f"s3proxy.identity={self._credentials[0]}",
            f"s3proxy.credential={self._credentials[1]}",
            # The SDK sends x-amz-security-token (the push-access sessionToken); s3proxy
            # refuses headers it does not know unless told to ignore them.
            "s3proxy.ignore-unknown-headers=true",
            "jclouds.provider=filesystem",
            f"jclouds.filesystem.basedir={self.data}",
            "",
        ]).encode()

    async def ready(self) -> str:
        """The server's URL, starting it if it is not running."""
        async with self._lock:
            if self.process is not None and self.process.returncode is None and self.url is not None:
                return self.url
            if self.tls is None:
                await anyio.to_thread.run_sync(self.prepare)
            self.url = await self._start()
            return self.url

    async def _start(self) -> str:
        jar = find_jar()
        if jar is None or shutil.which("java") is None:
            raise StorageUnavailable(f"the local object storage needs {missing()}")
        properties = self.directory / "s3proxy.properties"
        await anyio.to_thread.run_sync(write_private, properties, self._properties())
        log_path = self.directory / "s3proxy.log"
        log_fd = open_private_append(log_path)
        start = os.fstat(log_fd).st_size
        try:
            self.process = await asyncio.create_subprocess_exec(
                "setpriv", "--pdeathsig", "KILL", "java", *JVM, "-jar", str(jar), "--properties", str(properties),
                stdin=asyncio.subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, start_new_session=True,
                env={**os.environ, "LOG_LEVEL": "info"})
        finally:
            os.close(log_fd)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while loop.time() < deadline:
            found = _LISTENING.search(await anyio.to_thread.run_sync(_tail, log_path, start))
            if found:
                return f"https://127.0.0.1:{int(found.group(1))}"
            if self.process.returncode is not None:
                raise StorageUnavailable(f"the local object storage (s3proxy) exited with code "
                                         f"{self.process.returncode}; its log is {log_path}")
            await asyncio.sleep(0.1)
        await self.stop()
        raise StorageUnavailable(f"the local object storage (s3proxy) did not start in {START_TIMEOUT:.0f} s; "
                                 f"its log is {log_path}")

    async def access(self, organization_id: str) -> StorageAccess:
        url = await self.ready()
        assert self._credentials is not None
        # Static credentials shared by every organization: the build checks each upload's
        # content against its hash (controlplane/snapshots/contexthash.py).
        return StorageAccess(access_key=self._credentials[0], secret=self._credentials[1], session_token="local",
                             storage_url=url, organization_id=organization_id, bucket=BUCKET, region=REGION)

    async def fetch(self, key: str, scratch: Path) -> Path | None:
        path = self.data / BUCKET / key  # `key` is made of checked parts (contexts.key)
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
