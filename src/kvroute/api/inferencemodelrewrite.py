"""InferenceModelRewrite ``llm-d.ai/v1alpha2`` (legacy: ``inference.networking.x-k8s.io``).

Ordered rules; each matches model names exactly (``matches`` is an OR; an empty or absent list
matches every model, a *generic* rule) and sends the request to a weighted split of
``targets``. As upstream (llm-d-router ``apix/v1alpha2``, whose CRD has no all-or-none rule) a
target without ``weight`` weighs 0 when others have one; with none set, or a total of 0, every
target is equally likely. How rules from several objects are merged is in
:mod:`kvroute.requestcontrol.model_resolution`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from kvroute.api.inferencemodel import Weight
from kvroute.api.inferenceobjective import AlphaApiVersion, PoolObjectReference
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

    @property
    def is_generic(self) -> bool:
        return not self.matches


class InferenceModelRewriteSpec(KubeModel):
    pool_ref: PoolObjectReference
    rules: list[RewriteRule]  # required, may be empty (upstream: no minItems)


class InferenceModelRewrite(KubeModel):
    api_version: AlphaApiVersion
    kind: Literal["InferenceModelRewrite"]
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: InferenceModelRewriteSpec
    status: ConditionedStatus | None = None
