"""Every plugin has a type (its registered name) and an instance name from the config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class TypedName:
    type: str
    name: str

    def __str__(self) -> str:
        return f"{self.name}/{self.type}" if self.name != self.type else self.type


class Plugin(Protocol):
    @property
    def typed_name(self) -> TypedName: ...
