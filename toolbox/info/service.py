"""Process-wide environment updates (`POST /env`) and the init token (`POST /init`)."""

from __future__ import annotations

import os
import re

from toolbox.errors import Code, DaemonError

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def validate_env_name(name: str) -> None:
    if not ENV_NAME.match(name):
        raise DaemonError(
            Code.BAD_REQUEST,
            f"invalid environment variable name {name!r}: use letters, digits and '_', not starting with a digit",
        )


def update_environment(
    set_vars: dict[str, str], unset: list[str], unset_value_prefix: str | None
) -> None:
    """Change the daemon's own environment, which every process started later inherits.

    Order per Daytona: `unset` first, then `unsetValuePrefix`, then `set`.
    """
    for name in [*set_vars, *unset]:
        validate_env_name(name)
    for name, value in set_vars.items():
        if "\x00" in value:
            raise DaemonError(Code.BAD_REQUEST, f"value of {name} contains a NUL byte")
    for name in unset:
        os.environ.pop(name, None)
    if unset_value_prefix:
        for name, value in list(os.environ.items()):
            if name not in set_vars and value.startswith(unset_value_prefix):
                del os.environ[name]
    os.environ.update(set_vars)


class InitState:
    token: str | None = None
