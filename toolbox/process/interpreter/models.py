"""Wire models of the interpreter API (field names as Daytona's; also feed GET /openapi.json)."""

from __future__ import annotations

from pydantic import Field, StrictStr

from toolbox.http import WireModel


class CreateContextRequest(WireModel):
    cwd: StrictStr | None = None
    language: StrictStr | None = Field(default=None, description="only 'python'")


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
