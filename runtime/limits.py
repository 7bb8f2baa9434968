"""Resource limits of one sandbox (Daytona's defaults: 1 vCPU, 1 GiB memory)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Limits:
    cpus: float = 1.0
    memory_mib: int = 1024
    pids: int = 512

    def __post_init__(self) -> None:
        if not 0.01 <= self.cpus <= 256:
            raise ValueError("cpus must be between 0.01 and 256")
        if not 16 <= self.memory_mib <= 1024 * 1024:
            raise ValueError("memory_mib must be between 16 and 1048576")
        if not 16 <= self.pids <= 1_000_000:
            raise ValueError("pids must be between 16 and 1000000")

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * 1024 * 1024

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> "Limits":
        data = data or {}
        unknown = set(data) - {"cpus", "memory_mib", "pids"}
        if unknown:
            raise ValueError(f"unknown limit(s): {', '.join(sorted(unknown))}")
        default = cls()

        def number(name: str, kind: type, fallback: float) -> Any:
            value = data.get(name, fallback)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                    kind is int and value != int(value)):
                raise ValueError(f"limits.{name} must be {'an integer' if kind is int else 'a number'}, "
                                 f"got {value!r}")
            return kind(value)

        return cls(
            cpus=number("cpus", float, default.cpus),
            memory_mib=number("memory_mib", int, default.memory_mib),
            pids=number("pids", int, default.pids),
        )
