"""Wire models of the interpreter API (field names as Daytona's; also feed GET /openapi.json)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, StrictStr, StringConstraints, field_validator

from toolbox.http import WireModel

# A name the worker can put in its environment, and a value without NUL.
EnvName = Annotated[StrictStr, StringConstraints(pattern=r"^[^=\x00]+$")]
EnvValue = Annotated[StrictStr, StringConstraints(pattern=r"^[^\x00]*$")]


class CreateContextRequest(WireModel):
    cwd: StrictStr | None = None
    language: StrictStr | None = Field(default=None, description="only 'python'")


class ExecuteRequest(WireModel):
    """The execute WebSocket's first frame. Empty `contextId`/`envs` mean the defaults, as in Daytona."""

    code: StrictStr = Field(min_length=1)
    context_id: StrictStr | None = Field(default=None, alias="contextId", description="default: `default`")
    envs: dict[EnvName, EnvValue] | None = None
    timeout: float | None = Field(default=None, ge=0, strict=True, description="seconds; 0 = none")

    @field_validator("context_id", "envs", mode="before")
    @classmethod
    def _empty_is_default(cls, value: Any) -> Any:
        return value or None


class InterpreterContext(WireModel):
    id: str
    cwd: str
    created_at: str = Field(alias="createdAt")
    active: bool
    language: str


class ListContextsResponse(WireModel):
    contexts: list[InterpreterContext]


class Message(WireModel):
    message: str


class ExecuteFrame(WireModel):
    """Every frame the execute WebSocket sends has all five keys; unused ones are ""."""

    type: str = Field(description="stdout | stderr | error | control")
    text: str = Field(description="output text; for control: completed | interrupted")
    name: str = Field(description="exception class (error)")
    value: str = Field(description="str(exception) (error)")
    traceback: str = Field(description="the user's frames, File \"<stdin>\" (error)")
