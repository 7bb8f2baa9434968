"""Wire models the OpenAPI document refers to from every operation."""

from __future__ import annotations

from pydantic import Field

from toolbox.http import WireModel


class ErrorResponse(WireModel):
    """Daytona's error body (toolbox-api.md §3.1): every 4xx/5xx the daemon sends."""

    status_code: int = Field(alias="statusCode")
    message: str
    code: str | None = None
    source: str | None = None
    timestamp: str
    path: str
    method: str | None = None
