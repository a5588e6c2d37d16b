"""InferenceObjective ``inference.networking.x-k8s.io/v1alpha2`` (upstream v1.5.0).

Selected per request by the ``x-gateway-inference-objective`` header (its value is the object's
``metadata.name``). ``priority``: higher is more important, negative means sheddable, unset
means 0.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kvroute.api.meta import ConditionedStatus, Group, Kind, KubeModel, ObjectMeta, ObjectName

__all__ = ["InferenceObjective", "PoolObjectReference"]


class PoolObjectReference(KubeModel):
    """``poolRef`` of the current alpha APIs: the group defaults to the GA group."""

    group: Group = "inference.networking.k8s.io"
    kind: Kind = "InferencePool"
    name: ObjectName


class InferenceObjectiveSpec(KubeModel):
    priority: int | None = None
    pool_ref: PoolObjectReference


class InferenceObjective(KubeModel):
    api_version: Literal["inference.networking.x-k8s.io/v1alpha2"]
    kind: Literal["InferenceObjective"]
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: InferenceObjectiveSpec
    status: ConditionedStatus | None = None
