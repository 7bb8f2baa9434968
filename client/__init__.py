"""A small client of this project's Daytona REST API (`/api`) and of the toolbox behind the
proxy (`/toolbox/{id}/...`), shared by the `sandbox-toolbox` CLI and the MCP server.

`load_config()` finds the URL and key (`DAYTONA_API_URL` / `DAYTONA_API_KEY`, else the file
`sandbox-toolbox login` wrote); `Client(config)` makes the calls; every failure is an
`ApiError` carrying Daytona's error shape (status, message, code).
"""

from client.api import Client, Toolbox
from client.config import Config, ConfigError, config_path, load_config, save_config
from client.errors import ApiError

__all__ = ["ApiError", "Client", "Config", "ConfigError", "Toolbox", "config_path", "load_config", "save_config"]
