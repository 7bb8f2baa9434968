"""A small client of this project's Daytona REST API (`/api`) and of the toolbox behind the
proxy (`/toolbox/{id}/...`), shared by the `sandbox-toolbox` CLI and the MCP server.

`load_config()` finds the URL and key (`DAYTONA_API_URL` / `DAYTONA_API_KEY`, else the file
`sandbox-toolbox login` wrote); `Client(config)` makes the calls; every failure is an
`ApiError` carrying Daytona's error shape (status, message, code).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client.config import Config, ConfigError, config_path, load_config, save_config

if TYPE_CHECKING:
    from client.api import Client, Toolbox
    from client.errors import ApiError


def __getattr__(name: str) -> Any:
    # httpx is imported on first use, not with the package: `sandbox-toolbox --help` and
    # usage errors then start in half the time.
    if name in ("Client", "Toolbox"):
        from client import api

        return getattr(api, name)
    if name == "ApiError":
        from client import errors

        return errors.ApiError
    raise AttributeError(f"module 'client' has no attribute {name!r}")


__all__ = ["ApiError", "Client", "Config", "ConfigError", "Toolbox", "config_path", "load_config", "save_config"]
