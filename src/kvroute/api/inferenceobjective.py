"""InferenceObjective ``llm-d.ai/v1alpha2`` (legacy: ``inference.networking.x-k8s.io``).

The type moved from the Gateway API Inference Extension (GIE v1.5) to llm-d-router under the
group ``llm-d.ai`` with the same version and schema; both apiVersions load. Selected per request
by the ``x-llm-d-inference-objective`` header (alias ``x-gateway-inference-objective``; its value
is the object's ``metadata.name``). ``priority`` (int32): higher is more important, negative
means sheddable, unset means 0.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kvroute.api.meta import (
    ConditionedStatus,
    Group,
    Int32,
    Kind,
    KubeModel,
    ObjectMeta,
    ObjectName,
)

__all__ = [
    "ALPHA_API_VERSIONS",
    "LEGACY_ALPHA_API_VERSION",
    "LLM_D_ALPHA_API_VERSION",
    "InferenceObjective",
    "PoolObjectReference",
]

LLM_D_ALPHA_API_VERSION = "llm-d.ai/v1alpha2"
LEGACY_ALPHA_API_VERSION = "inference.networking.x-k8s.io/v1alpha2"
# The apiVersions InferenceObjective and InferenceModelRewrite are read under, current first.
ALPHA_API_VERSIONS = (LLM_D_ALPHA_API_VERSION, LEGACY_ALPHA_API_VERSION)
AlphaApiVersion = Literal["llm-d.ai/v1alpha2", "inference.networking.x-k8s.io/v1alpha2"]


class PoolObjectReference(KubeModel):
    """``poolRef`` of the current alpha APIs: the group defaults to the GA group."""

    group: Group = "inference.networking.k8s.io"
    kind: Kind = "InferencePool"
    name: ObjectName


class InferenceObjectiveSpec(KubeModel):
    priority: Int32 | None = None
    pool_ref: PoolObjectReference


class InferenceObjective(KubeModel):
    api_version: AlphaApiVersion
    kind: Literal["InferenceObjective"]
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: InferenceObjectiveSpec
    status: ConditionedStatus | None = None
