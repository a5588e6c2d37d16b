"""Every plugin has a type (its registered name) and an instance name from the config."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from kvroute.errors import PluginValidationError

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class TypedName:
    type: str
    name: str

    def __str__(self) -> str:
        return f"{self.name}/{self.type}" if self.name != self.type else self.type


class Plugin(Protocol):
    @property
    def typed_name(self) -> TypedName: ...


def validate_parameters(
    model: type[M], name: str, type_name: str, raw: Mapping[str, Any] | None
) -> M:
    """Validate a plugin's ``parameters`` into ``model`` or raise a
    :class:`~kvroute.errors.PluginValidationError` naming the instance, its type and each field,
    e.g. ``plugin 'picker' (max-score-picker): parameters.maxNumOfEndpoints: ...``."""
    try:
        return model.model_validate(dict(raw or {}))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            where = f"parameters.{loc}" if loc else "parameters"
            problems.append(f"{where}: {err['msg']}")
        raise PluginValidationError(
            f"plugin {name!r} ({type_name}): " + "; ".join(problems)
        ) from None
