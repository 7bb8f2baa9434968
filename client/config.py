"""Where the API is and which key to use, as the Daytona SDKs find them: `DAYTONA_API_URL`
and `DAYTONA_API_KEY`, else the file `sandbox-toolbox login` wrote
(`$XDG_CONFIG_HOME/sandbox-toolbox/config.json`, 0600). The environment wins over the
file, variable by variable."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# The main job's default address (`./scripts/start`: proxy on localhost:8080, API at /api).
DEFAULT_API_URL = "http://localhost:8080/api"


class ConfigError(Exception):
    """No usable configuration; the message says what to set or run."""


@dataclass(frozen=True)
class Config:
    api_url: str
    api_key: str
    source: str  # where the key came from: "DAYTONA_API_KEY" or the file's path


def config_dir(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME") or Path.home()) / ".config")
    return Path(base) / "sandbox-toolbox"


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    return config_dir(environ) / "config.json"


def read_file(path: Path) -> dict[str, str]:
    """The file's `apiUrl` and `apiKey` (missing file: empty); a broken one is a ConfigError."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except ValueError:
        raise ConfigError(f"{path} is not JSON; run `sandbox-toolbox login` again") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a JSON object; run `sandbox-toolbox login` again")
    return {k: v for k, v in data.items() if k in ("apiUrl", "apiKey") and isinstance(v, str)}


def load_config(environ: Mapping[str, str] | None = None) -> Config:
    environ = os.environ if environ is None else environ
    path = config_path(environ)
    stored = read_file(path)
    url = (environ.get("DAYTONA_API_URL") or stored.get("apiUrl") or DEFAULT_API_URL).rstrip("/")
    key = environ.get("DAYTONA_API_KEY") or ""
    source = "DAYTONA_API_KEY"
    if not key:
        key, source = stored.get("apiKey", ""), str(path)
    if not key:
        raise ConfigError("no API key: set DAYTONA_API_KEY (the main job prints it at start, and keeps it in "
                          "STATE/api-key) or run `sandbox-toolbox login --api-key KEY`")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"DAYTONA_API_URL must be an http:// or https:// URL, got {url!r}")
    return Config(api_url=url, api_key=key, source=source)


def save_config(api_url: str, api_key: str, environ: Mapping[str, str] | None = None) -> Path:
    """Write the file 0600 in a 0700 directory, through a temp file and a rename, so no
    reader ever sees half of it and the key is never readable by others, even briefly."""
    path = config_path(environ)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".config-", suffix=".tmp")  # mkstemp: 0600
    try:
        with os.fdopen(fd, "w") as out:
            json.dump({"apiUrl": api_url.rstrip("/"), "apiKey": api_key}, out, indent=2)
            out.write("\n")
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def remove_config(environ: Mapping[str, str] | None = None) -> bool:
    path = config_path(environ)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
