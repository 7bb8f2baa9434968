"""Wire models of `/sandbox`, with Daytona's exact field names (0.226.1's generated client
is the contract: control-plane-api.md §2.1, §2.4).

Requests are strict (a JSON `1.0` is not an integer, `"true"` not a boolean) and unknown
fields are ignored, so newer SDKs that send more still work.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SandboxVolume(_Request):
    volumeId: StrictStr
    mountPath: StrictStr
    subpath: StrictStr | None = None


class CreateSandbox(_Request):
    name: StrictStr | None = None
    snapshot: StrictStr | None = None
    user: StrictStr | None = None
    env: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    labels: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    public: StrictBool | None = None
    target: StrictStr | None = None
    cpu: StrictInt | None = None
    gpu: StrictInt | None = None
    memory: StrictInt | None = None
    disk: StrictInt | None = None
    gpuType: list[StrictStr] | None = None
    autoStopInterval: StrictInt | None = None
    autoPauseInterval: StrictInt | None = None
    autoArchiveInterval: StrictInt | None = None
    autoDeleteInterval: StrictInt | None = None
    ttlMinutes: StrictInt | None = None
    queueTimeout: StrictInt | None = None
    volumes: list[SandboxVolume] = Field(default_factory=list)
    secrets: list[dict[StrictStr, StrictStr]] | None = None
    networkBlockAll: StrictBool | None = None
    networkAllowList: StrictStr | None = None
    domainAllowList: StrictStr | None = None
    kvm: StrictBool | None = None
    spot: StrictBool | None = None
    outboundProxyUrl: StrictStr | None = None
    otelEndpointOverride: StrictStr | None = None
    linkedSandbox: StrictStr | None = None
    buildInfo: dict[str, object] | None = None


class UpdateNetworkSettings(_Request):
    networkBlockAll: StrictBool | None = None
    networkAllowList: StrictStr | None = None
    domainAllowList: StrictStr | None = None


class SandboxLabels(_Request):
    labels: dict[StrictStr, StrictStr]


class ResizeSandbox(_Request):
    cpu: StrictInt | None = None
    memory: StrictInt | None = None
    disk: StrictInt | None = None
    gpu: StrictInt | None = None


class SandboxVolumeOut(_Response):
    volumeId: str
    mountPath: str
    subpath: str | None = None


class SandboxListItem(_Response):
    """Also the base of the full `Sandbox` (0.226.1 `SandboxListItem` R fields first)."""

    id: str
    organizationId: str
    name: str
    target: str
    user: str
    public: bool
    networkBlockAll: bool
    cpu: int
    gpu: int
    memory: int
    disk: int
    labels: dict[str, str]
    toolboxProxyUrl: str
    snapshot: str | None = None
    state: str
    desiredState: str
    errorReason: str | None = None
    recoverable: bool | None = None
    networkAllowList: str | None = None
    domainAllowList: str | None = None
    autoStopInterval: int
    autoArchiveInterval: int
    autoDeleteInterval: int
    createdAt: str
    updatedAt: str
    lastActivityAt: str | None = None
    backupState: str = "None"
    sandboxClass: str = "container"
    spot: bool = False


class Sandbox(SandboxListItem):
    env: dict[str, str]
    kvm: bool = False
    linkedSandboxId: str | None = None
    volumes: list[SandboxVolumeOut] = Field(default_factory=list)


class ListSandboxesResponse(_Response):
    items: list[SandboxListItem]
    nextCursor: str | None = None


class PortPreviewUrl(_Response):
    sandboxId: str
    url: str
    token: str


class ToolboxProxyUrl(_Response):
    url: str
