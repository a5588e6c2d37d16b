"""InferenceModel ``inference.networking.x-k8s.io/v1alpha2`` (legacy, upstream v0.5.1).

Maps a client-facing ``modelName`` to a criticality and, optionally, a weighted split over
``targetModels`` (LoRA adapters or base models as the servers register them). Its successors
are InferenceObjective (priority) and InferenceModelRewrite (renaming and traffic splits); both
are supported side by side, see :mod:`kvroute.requestcontrol.model_resolution`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from kvroute.api.meta import (
    ConditionedStatus,
    Group,
    Kind,
    KubeModel,
    ObjectMeta,
    ObjectName,
    range_message,
)

__all__ = [
    "CriticalityName",
    "InferenceModel",
    "LegacyPoolObjectReference",
    "TargetModel",
    "Weight",
]

CriticalityName = Literal["Critical", "Standard", "Sheddable"]
Weight = Annotated[
    int,
    Field(ge=1, le=1_000_000, json_schema_extra={"format": "int32"}),
    range_message(1, 1_000_000),
]
ModelName = Annotated[str, Field(min_length=1, max_length=256)]


class LegacyPoolObjectReference(KubeModel):
    """``poolRef`` of the legacy API: the group defaults to the alpha group."""

    group: Group = "inference.networking.x-k8s.io"
    kind: Kind = "InferencePool"
    name: ObjectName


class TargetModel(KubeModel):
    name: Annotated[str, Field(min_length=1, max_length=253)]
    weight: Weight | None = None


class InferenceModelSpec(KubeModel):
    model_name: ModelName
    criticality: CriticalityName | None = None
    target_models: list[TargetModel] = Field(default_factory=list, max_length=10)
    pool_ref: LegacyPoolObjectReference

    @field_validator("target_models")
    @classmethod
    def _weights_all_or_none(cls, targets: list[TargetModel]) -> list[TargetModel]:
        weighted = sum(1 for t in targets if t.weight is not None)
        if 0 < weighted < len(targets):
            raise ValueError("weights must be set on all targetModels or on none")
        return targets


class InferenceModel(KubeModel):
    api_version: Literal["inference.networking.x-k8s.io/v1alpha2"]
    kind: Literal["InferenceModel"]
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: InferenceModelSpec
    status: ConditionedStatus | None = None
