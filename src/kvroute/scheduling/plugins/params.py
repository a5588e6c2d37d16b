"""Plugin parameters: each plugin declares a pydantic ``Params`` model; factories validate here.

Parameters use the upstream camelCase keys (``maxNumOfEndpoints``); unknown keys are errors, as
upstream's strict decoding makes them. A failure raises
:class:`~kvroute.errors.PluginValidationError` whose message names the plugin instance, its type
and the field, e.g. ``plugin 'picker' (max-score-picker): parameters.maxNumOfEndpoints: Input
should be greater than or equal to 1``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

from kvroute.plugins.base import validate_parameters


class PluginParams(BaseModel):
    """Base for every plugin's ``Params``: strict keys, frozen, camelCase aliases allowed."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


P = TypeVar("P", bound=PluginParams)


def parse_params(model: type[P], name: str, type_name: str, raw: Mapping[str, Any] | None) -> P:
    """Validate ``raw`` (the config's ``parameters``) into ``model`` or raise a named error."""
    return validate_parameters(model, name, type_name, raw)
