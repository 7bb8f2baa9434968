"""Dockerfile text (what the SDK's `Image` sends, control-plane-api.md §4.3) parsed into
instructions. Only the instructions `Image` emits are accepted (and several stages, for
the project's own images: `FROM image AS name`, a later `FROM name`);
anything else is a `DockerfileError` that names the instruction and its line, so a user
sees why before a build starts."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

SUPPORTED = ("FROM", "RUN", "ENV", "WORKDIR", "USER", "ARG", "ENTRYPOINT", "CMD", "COPY", "ADD",
             "LABEL", "EXPOSE", "SHELL")
_VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class DockerfileError(ValueError):
    pass


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str  # the text after the keyword, continuation lines joined
    line: int  # 1-based, where the instruction starts

    @property
    def text(self) -> str:
        return f"{self.keyword} {self.value}"

    def fail(self, why: str) -> DockerfileError:
        return DockerfileError(f"Dockerfile line {self.line} ({self.keyword}): {why}")


def parse(text: str) -> list[Instruction]:
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are dropped, as docker does
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1])
            continue
        pending.append(stripped)
        joined = " ".join(p for p in pending if p)
        pending = []
        keyword, _, rest = joined.partition(" ")
        keyword = keyword.upper()
        if keyword not in SUPPORTED:
            raise DockerfileError(f"Dockerfile line {start}: {keyword} is not supported by this builder "
                                  f"(supported: {', '.join(SUPPORTED)})")
        instructions.append(Instruction(keyword, rest.strip(), start))
    if pending:
        raise DockerfileError("Dockerfile ends inside a continued line (a trailing backslash)")
    if not instructions or instructions[0].keyword not in ("FROM", "ARG"):
        raise DockerfileError("a Dockerfile starts with FROM (or ARG before FROM)")
    if not any(i.keyword == "FROM" for i in instructions):
        raise DockerfileError("a Dockerfile needs a FROM")
    return instructions


def expand(value: str, variables: Mapping[str, str]) -> str:
    """`$NAME`, `${NAME}` and `${NAME:-default}` as docker expands them outside RUN."""
    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        default = match.group(2)
        found = variables.get(name)
        if found:
            return found
        return default if default is not None else (found or "")
    return _VARIABLE.sub(one, value)


def exec_form(value: str) -> list[str] | None:
    """`["a", "b"]` as a list, or None for the shell form."""
    if not value.startswith("["):
        return None
    try:
        parsed = json.loads(value)
    except ValueError:
        return None
    if not isinstance(parsed, list) or not all(isinstance(p, str) for p in parsed):
        return None
    return parsed


def command(value: str, shell: list[str]) -> list[str]:
    """RUN / ENTRYPOINT / CMD: the exec form as is, the shell form through the shell."""
    argv = exec_form(value)
    return argv if argv is not None else [*shell, value]


def words(instruction: Instruction) -> list[str]:
    try:
        return shlex.split(instruction.value)
    except ValueError as exc:
        raise instruction.fail(f"cannot split {instruction.value!r}: {exc}") from None


def env_pairs(instruction: Instruction, variables: Mapping[str, str]) -> dict[str, str]:
    """ENV K=V K2="v 2" (the SDK's form), or the legacy ENV K value."""
    parts = words(instruction)
    if not parts:
        raise instruction.fail("needs NAME=value")
    if "=" not in parts[0]:
        name, _, rest = instruction.value.partition(" ")
        if not _NAME.fullmatch(name) or not rest.strip():
            raise instruction.fail("needs NAME=value")
        return {name: expand(rest.strip(), variables)}
    pairs: dict[str, str] = {}
    for part in parts:
        name, sep, value = part.partition("=")
        if not sep or not _NAME.fullmatch(name):
            raise instruction.fail(f"{part!r} is not NAME=value")
        pairs[name] = expand(value, {**variables, **pairs})
    return pairs


def arg_pair(instruction: Instruction, variables: Mapping[str, str]) -> tuple[str, str | None]:
    parts = words(instruction)
    if len(parts) != 1:
        raise instruction.fail("needs one NAME or NAME=default")
    name, sep, value = parts[0].partition("=")
    if not _NAME.fullmatch(name):
        raise instruction.fail(f"{name!r} is not a valid name")
    return name, (expand(value, variables) if sep else None)


def copy_sources(instruction: Instruction) -> tuple[list[str], str]:
    """COPY/ADD's sources and destination, JSON or plain form; flags are refused."""
    parts = exec_form(instruction.value) or words(instruction)
    if any(p.startswith("--") for p in parts):
        raise instruction.fail("flags (--from, --chown, ...) are not supported")
    if len(parts) < 2:
        raise instruction.fail("needs a source and a destination")
    return parts[:-1], parts[-1]
