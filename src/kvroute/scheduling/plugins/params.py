"""Plugin parameters: each plugin declares a pydantic ``Params`` model; factories validate here.

Parameters use the upstream camelCase keys (``maxNumOfEndpoints``); unknown keys are errors, as
upstream's strict decoding makes them. A failure raises
:class:`~kvroute.errors.PluginValidationError` whose message names the plugin instance, its type
and the field, e.g. ``plugin 'picker' (max-score-picker): parameters.maxNumOfEndpoints: Input
should be greater than or equal to 1``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from kvroute.errors import PluginValidationError


class PluginParams(BaseModel):
    """Base for every plugin's ``Params``: strict keys, frozen, camelCase aliases allowed."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


P = TypeVar("P", bound=PluginParams)


def parse_params(model: type[P], name: str, type_name: str, raw: Mapping[str, Any] | None) -> P:
    """Validate ``raw`` (the config's ``parameters``) into ``model`` or raise a named error."""
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


_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_go_duration(value: object) -> float:
    """Seconds from a Go ``time.ParseDuration`` string (``"200ms"``, ``"1m30s"``) or a number.

    Upstream configs write durations the Go way; a bare number is taken as seconds.
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '200ms'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if text == "0":
            return 0.0
        pos, seconds = 0, 0.0
        for m in _GO_DURATION.finditer(text):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * _GO_UNITS[m.group(2)]
            pos = m.end()
        if pos != len(text) or not text:
            raise ValueError(f"invalid duration {value!r} (expected e.g. '200ms', '1.5s', '1m')")
    else:
        raise ValueError("expected a duration such as '200ms'")
    if seconds < 0:
        raise ValueError("duration must not be negative")
    return seconds


# A pydantic field type: accepts "200ms"-style strings or seconds, stores seconds as float.
GoDuration = Annotated[float, BeforeValidator(parse_go_duration)]
