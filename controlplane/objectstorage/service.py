"""The object storage of this control plane: an external S3 when configured
(CONTROLPLANE_S3_*), else the local s3proxy when Java and its jar are here, else none (push-
access is a 400 naming what to install). Builds read uploads back through `storage()`."""

from __future__ import annotations

import logging
from pathlib import Path

import anyio

from controlplane.errors import ApiError, BadRequest
from controlplane.objectstorage import local
from controlplane.objectstorage.access import ExternalS3, StorageAccess, StorageUnavailable
from controlplane.objectstorage.local import LocalS3
from controlplane.objectstorage.tls import trust_command

log = logging.getLogger("controlplane.objectstorage")

UNAVAILABLE = ("Images with local files (add_local_file, add_local_dir, pip_install_from_requirements) need "
               "S3-compatible object storage for the SDK to upload them to, and this server has none: {why}. "
               "See docs/images.md; without it use run_commands, pip_install, env, workdir")


class ObjectStorage:
    def __init__(self, directory: Path) -> None:
        self.local: LocalS3 | None = None
        self.why: str | None = None  # set: there is no object storage
        try:
            self.external = ExternalS3.from_env()
        except ValueError as exc:  # said at push-access and in the banner; the rest still runs
            self.external, self.why = None, f"a correct configuration ({exc})"
            log.error("no object storage: %s", exc)
            return
        if self.external is None:
            self.why = local.missing()
            self.local = LocalS3(directory) if self.why is None else None

    def describe(self) -> str:
        """The banner's line."""
        if self.external is not None:
            return f"{self.external.endpoint} (bucket {self.external.bucket})"
        if self.local is not None and self.local.tls is not None:
            return (f"s3proxy on 127.0.0.1, started on first use; trust its CA for uploads: "
                    f"{trust_command(self.local.tls.ca)}")
        return f"none: Image.add_local_file/add_local_dir need {self.why}"

    async def open(self) -> None:
        if self.local is None:
            return
        try:
            await anyio.to_thread.run_sync(self.local.prepare)
        except (OSError, RuntimeError) as exc:
            self.local, self.why = None, f"its TLS files, which could not be made ({exc})"
            log.error("no local object storage: %s", exc)

    async def close(self) -> None:
        if self.local is not None:
            await self.local.stop()

    async def storage(self) -> ExternalS3 | LocalS3:
        if self.external is not None:
            return self.external
        if self.local is None:
            raise StorageUnavailable(UNAVAILABLE.format(why=f"it needs {self.why}"))
        return self.local

    async def push_access(self, organization_id: str) -> StorageAccess:
        try:
            store = await self.storage()
            return await store.access(organization_id)
        except StorageUnavailable as exc:
            if self.local is None and self.external is None:
                raise BadRequest(str(exc), "OBJECT_STORAGE_UNAVAILABLE") from None
            raise ApiError(503, str(exc), "OBJECT_STORAGE_UNAVAILABLE") from None
