"""Wire models of the PTY API (field names as Daytona's; also feed GET /openapi.json)."""

from __future__ import annotations

from pydantic import Field, StrictBool, StrictStr

from toolbox.http import WireModel


class PtyCreateRequest(WireModel):
    id: StrictStr | None = Field(default=None, description="required: the new PTY's id")
    cwd: StrictStr | None = None
    envs: dict[str, StrictStr] | None = None
    cols: int = Field(default=80, description="1-1000")
    rows: int = Field(default=24, description="1-1000")
    lazy_start: StrictBool = Field(default=False, alias="lazyStart")


class PtyCreateResponse(WireModel):
    session_id: str = Field(alias="sessionId")


class PtyResizeRequest(WireModel):
    cols: int
    rows: int


class PtySessionInfo(WireModel):
    id: str
    cwd: str
    envs: dict[str, str]
    cols: int
    rows: int
    created_at: str = Field(alias="createdAt")
    active: bool
    lazy_start: bool = Field(alias="lazyStart")


class PtyListResponse(WireModel):
    sessions: list[PtySessionInfo]


class Message(WireModel):
    message: str


class AttachQuery(WireModel):
    offset: int | None = Field(default=None, ge=0, description="resume at this output byte (beyond Daytona)")
    scrollback: int | None = Field(
        default=None, ge=0, description="bytes of recent output replayed on attach; default 65536, 0 = live only"
    )


class CreateConnectQuery(AttachQuery):
    id: str
    cols: int | None = Field(default=80, ge=1, le=1000)
    rows: int | None = Field(default=24, ge=1, le=1000)
    cwd: str | None = None
