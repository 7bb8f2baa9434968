"""What push-access hands the SDK (`StorageAccessDto`), and an external S3-compatible store
(MinIO, AWS, ...) named by configuration: the production path, where the operator runs the
storage and its TLS."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from obstore.store import S3Config

ENV_PREFIX = "CONTROLPLANE_S3_"
MAX_OBJECT = 5 << 30  # an upload read back (contexts.py bounds what it unpacks to)


class StorageUnavailable(Exception):
    """The object storage cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class StorageAccess:
    access_key: str
    secret: str
    session_token: str
    storage_url: str
    organization_id: str
    bucket: str
    region: str

    def dto(self) -> dict[str, str]:
        return {"accessKey": self.access_key, "secret": self.secret, "sessionToken": self.session_token,
                "storageUrl": self.storage_url, "organizationId": self.organization_id, "bucket": self.bucket,
                "region": self.region}


@dataclass(frozen=True)
class ExternalS3:
    """CONTROLPLANE_S3_ENDPOINT (https://...), _ACCESS_KEY, _SECRET_KEY, _BUCKET, and
    optionally _REGION and _SESSION_TOKEN. The control plane reads uploads back with the
    same credentials, through obstore (the SDK's own S3 client)."""

    endpoint: str
    access_key: str
    secret: str
    bucket: str
    region: str = "us-east-1"
    session_token: str = ""

    @classmethod
    def from_env(cls) -> ExternalS3 | None:
        env = {k[len(ENV_PREFIX):]: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX) and v}
        if "ENDPOINT" not in env:
            return None
        wanted = [f"{ENV_PREFIX}{n}" for n in ("ACCESS_KEY", "SECRET_KEY", "BUCKET") if n not in env]
        if wanted:
            raise ValueError(f"{ENV_PREFIX}ENDPOINT is set but {', '.join(wanted)} is not")
        if not env["ENDPOINT"].startswith("https://"):
            raise ValueError(f"{ENV_PREFIX}ENDPOINT must be https:// (the SDK uploads over HTTPS only)")
        return cls(env["ENDPOINT"].rstrip("/"), env["ACCESS_KEY"], env["SECRET_KEY"], env["BUCKET"],
                   env.get("REGION", "us-east-1"), env.get("SESSION_TOKEN", ""))

    async def access(self, organization_id: str) -> StorageAccess:
        return StorageAccess(self.access_key, self.secret, self.session_token, self.endpoint, organization_id,
                             self.bucket, self.region)

    # Every organization gets these same keys: the build checks uploads against their hashes.
    isolated = False

    async def fetch(self, organization_id: str, key: str, scratch: Path) -> Path | None:
        import obstore
        from obstore.store import S3Store

        config: S3Config = {"endpoint": self.endpoint, "region": self.region, "access_key_id": self.access_key,
                            "secret_access_key": self.secret, "virtual_hosted_style_request": False}
        if self.session_token:  # obstore refuses an empty token, and None
            config["session_token"] = self.session_token
        store = S3Store(self.bucket, config=config)
        try:
            result = await obstore.get_async(store, key)
        except FileNotFoundError:
            return None
        if int(result.meta["size"]) > MAX_OBJECT:
            raise StorageUnavailable(f"the object {key} is larger than {MAX_OBJECT >> 30} GiB")
        async with await anyio.open_file(scratch, "wb") as out:
            async for chunk in result.stream():
                await out.write(chunk)
        return scratch

    async def stop(self) -> None:
        pass
