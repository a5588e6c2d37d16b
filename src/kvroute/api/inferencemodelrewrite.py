"""InferenceModelRewrite ``inference.networking.x-k8s.io/v1alpha2`` (alpha since upstream v1.2.1).

Ordered rules; each matches model names exactly (``matches`` is an OR; an empty or absent list
matches every model, a *generic* rule) and sends the request to a weighted split of
``targets``. Weights are all-or-none; with none set every target is equally likely (upstream's
total-weight-0 rule). How rules from several objects are merged is in
:mod:`kvroute.requestcontrol.model_resolution`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from kvroute.api.inferencemodel import Weight
from kvroute.api.inferenceobjective import PoolObjectReference
from kvroute.api.meta import ConditionedStatus, KubeModel, ObjectMeta

__all__ = ["InferenceModelRewrite", "ModelMatch", "RewriteRule", "RewriteTarget"]


class ModelMatch(KubeModel):
    type: Literal["Exact"] = "Exact"
    value: Annotated[str, Field(min_length=1)]


class Match(KubeModel):
    model: ModelMatch


class RewriteTarget(KubeModel):
    model_rewrite: Annotated[str, Field(min_length=1)]
    weight: Weight | None = None


class RewriteRule(KubeModel):
    matches: list[Match] = Field(default_factory=list)
    targets: list[RewriteTarget] = Field(min_length=1)

    @field_validator("targets")
    @classmethod
    def _weights_all_or_none(cls, targets: list[RewriteTarget]) -> list[RewriteTarget]:
        weighted = sum(1 for t in targets if t.weight is not None)
        if 0 < weighted < len(targets):
            raise ValueError("weights must be set on all targets or on none")
        return targets

    @property
    def is_generic(self) -> bool:
        return not self.matches


class InferenceModelRewriteSpec(KubeModel):
    pool_ref: PoolObjectReference
    rules: list[RewriteRule] = Field(min_length=1)


class InferenceModelRewrite(KubeModel):
    api_version: Literal["inference.networking.x-k8s.io/v1alpha2"]
    kind: Literal["InferenceModelRewrite"]
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: InferenceModelRewriteSpec
    status: ConditionedStatus | None = None
